"""The `llmproxy` command: run the server, or call one from the terminal."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from llmproxy.client import keys_cli, usage_cli
from llmproxy.client.client import LLMProxyClient, build_parameters, build_query_request
from llmproxy.v1 import llmproxy_pb2 as pb

_FORMATS = {
    "txt": pb.DOCUMENT_FORMAT_TXT,
    "pdf": pb.DOCUMENT_FORMAT_PDF,
    "docx": pb.DOCUMENT_FORMAT_DOCX,
    "md": pb.DOCUMENT_FORMAT_MARKDOWN,
    "markdown": pb.DOCUMENT_FORMAT_MARKDOWN,
    "json": pb.DOCUMENT_FORMAT_JSON,
}
_CACHE = {
    "default": pb.CACHE_MODE_UNSPECIFIED,
    "bypass": pb.CACHE_MODE_BYPASS,
    "refresh": pb.CACHE_MODE_REFRESH,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmproxy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="YAML config file (default: embedded mock setup)")
    serve.add_argument("--grpc-port", type=int)
    serve.add_argument("--http-port", type=int)
    serve.add_argument(
        "--workers", type=int, help="gateway processes sharing the ports; 0: one per CPU"
    )
    serve.set_defaults(handler=cmd_serve)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", default=os.environ.get("LLMPROXY_TARGET", "localhost:50051"))
        p.add_argument(
            "--api-key", default=os.environ.get("LLMPROXY_API_KEY"), help="or set LLMPROXY_API_KEY"
        )
        p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")

    def prompt_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("prompt", help="the prompt; '-' reads standard input")
        p.add_argument("--system", help="a system message")
        p.add_argument("--task-type", default="")
        p.add_argument("--temperature", type=float)
        p.add_argument("--max-tokens", type=int)
        p.add_argument("--top-p", type=float)
        p.add_argument("--stop", action="append", default=[])
        p.add_argument("--seed", type=int)
        p.add_argument("--cache", choices=sorted(_CACHE), default="default")
        p.add_argument("--json", action="store_true", help="print every event as JSON")

    query = sub.add_parser("query", help="stream one model's answer")
    client_args(query)
    prompt_args(query)
    query.add_argument("--model", "-m", default="auto")
    query.set_defaults(handler=cmd_query)

    parallel = sub.add_parser("parallel", help="ask several models at once")
    client_args(parallel)
    prompt_args(parallel)
    parallel.add_argument("--model", "-m", action="append", dest="models", default=[])
    parallel.set_defaults(handler=cmd_parallel)

    status = sub.add_parser("status", help="show every model's health")
    client_args(status)
    status.add_argument("--refresh", action="store_true")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)

    download = sub.add_parser("download", help="render text as a file")
    client_args(download)
    download.add_argument("content", help="the text; '-' reads standard input")
    download.add_argument("--format", "-f", choices=sorted(_FORMATS), default="txt")
    download.add_argument("--filename", default="")
    download.add_argument("--output-dir", "-o", default=".")
    download.set_defaults(handler=cmd_download)

    usage_cli.add_parser(sub, client_args, cmd_usage)
    keys_cli.add_parser(sub)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from llmproxy.server.config import ConfigError, load_settings
    from llmproxy.server.main import run

    overrides: dict = {}
    if args.grpc_port is not None:
        overrides.setdefault("server", {})["grpc_port"] = args.grpc_port
    if args.http_port is not None:
        overrides.setdefault("server", {})["http_port"] = args.http_port
    if args.workers is not None:
        overrides.setdefault("server", {})["workers"] = args.workers
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return run(settings, args.config, overrides)


def _client(args: argparse.Namespace) -> LLMProxyClient:
    return LLMProxyClient(args.target, api_key=args.api_key, timeout=args.timeout)


def _prompt(text: str) -> str:
    return sys.stdin.read() if text == "-" else text


def _messages(args: argparse.Namespace) -> list[tuple[str, str]]:
    messages = [("system", args.system)] if args.system else []
    return [*messages, ("user", _prompt(args.prompt))]


def _print_json(message) -> None:
    print(json_format.MessageToJson(message, indent=None), flush=True)


def cmd_query(args: argparse.Namespace) -> int:
    request = build_query_request(
        messages=_messages(args),
        model=args.model,
        task_type=args.task_type,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        top_p=args.top_p,
        stop=args.stop,
        seed=args.seed,
        cache=pb.CacheOptions(mode=_CACHE[args.cache]),
    )
    with _client(args) as client:
        for event in client.stream(request):
            kind = event.WhichOneof("event")
            if args.json:
                _print_json(event)
            elif kind == "delta":
                sys.stdout.write(event.delta.text)
                sys.stdout.flush()
            elif kind == "done":
                d, m = event.done, event.done.metadata
                print(
                    f"\n\n[{d.model} via {d.provider}] {m.input_tokens} in / {m.output_tokens} "
                    f"out tokens, {m.response_time_ms} ms (first token {m.time_to_first_token_ms}"
                    f" ms), ${d.cost_usd:.6f}, request {m.request_id}",
                    file=sys.stderr,
                )
    return 0


def cmd_parallel(args: argparse.Namespace) -> int:
    request = pb.ParallelQueryRequest(
        messages=[
            pb.Message(role=pb.ROLE_SYSTEM if r == "system" else pb.ROLE_USER, content=c)
            for r, c in _messages(args)
        ],
        models=args.models,
        task_type=args.task_type,
        parameters=build_parameters(
            args.temperature, args.max_tokens, args.top_p, args.stop, args.seed
        ),
        cache=pb.CacheOptions(mode=_CACHE[args.cache]),
    )
    texts: dict[str, list[str]] = {}
    failed = 0
    with _client(args) as client:
        for event in client.parallel(request):
            kind = event.WhichOneof("event")
            if args.json:
                _print_json(event)
                continue
            if kind == "delta":
                texts.setdefault(event.model, []).append(event.delta.text)
            elif kind == "done":
                print(
                    f"=== {event.model} ({event.done.metadata.response_time_ms} ms)\n"
                    f"{''.join(texts.get(event.model, []))}\n",
                    flush=True,
                )
            elif kind == "error":
                failed += 1
                print(
                    f"=== {event.model} failed: {event.error.code}: {event.error.message}\n",
                    flush=True,
                )
            elif kind == "summary":
                s = event.summary
                print(
                    f"[{s.succeeded} succeeded, {s.failed} failed in {s.total_time_ms} ms]",
                    file=sys.stderr,
                )
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.status(refresh=args.refresh)
    if args.json:
        _print_json(response)
        return 0
    print(f"{'MODEL':<24} {'PROVIDER':<16} {'UP':<4} {'LATENCY':>9} {'CIRCUIT':<10} LAST ERROR")
    for m in response.models:
        circuit = pb.CircuitState.Name(m.circuit_state).removeprefix("CIRCUIT_STATE_").lower()
        print(
            f"{m.name:<24} {m.provider:<16} {'yes' if m.available else 'no':<4} "
            f"{m.latency_ms:>7.1f}ms {circuit:<10} {m.last_error}"
        )
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.download(_prompt(args.content), _FORMATS[args.format], args.filename)
    path = Path(args.output_dir) / response.filename
    path.write_bytes(response.data)
    print(f"wrote {path} ({len(response.data)} bytes, {response.content_type})")
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.usage(start=args.since, end=args.until, key_id=args.key, model=args.model)
    print(usage_cli.render(response, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
