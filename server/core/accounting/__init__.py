"""Token budgets, prices, spend limits and the usage ledger: what a request costs and who pays.

`stage.UsageAccounting` is the AccountingStage of the query path; `service.Accounting`
owns its parts (price table, budgets, ledger writer) and their lifetimes.
"""
