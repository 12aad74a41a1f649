"""Prompt pairs for measuring the semantic cache: paraphrases should hit, the others never.

The non-paraphrases are hard on purpose: same topic and wording, different answer
(another country, another language, the opposite request, another number).
"""

PARAPHRASES: list[tuple[str, str]] = [
    ("What is the capital of France?", "Which city is the capital of France?"),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("What is the boiling point of water?", "At what temperature does water boil?"),
    ("Who wrote Pride and Prejudice?", "Who is the author of Pride and Prejudice?"),
    ("How many legs does a spider have?", "How many legs do spiders have?"),
    ("Translate 'good morning' into Spanish.", "How do you say 'good morning' in Spanish?"),
    ("What is the speed of light?", "How fast does light travel?"),
    ("Explain what photosynthesis is.", "Can you explain photosynthesis?"),
    ("What is the tallest mountain in the world?", "Which mountain is the highest on Earth?"),
    ("How do I install numpy?", "How can I install the numpy package?"),
    ("What time zone is Tokyo in?", "Which time zone does Tokyo use?"),
    ("Give me a synonym for happy.", "What is a synonym of happy?"),
    ("How do I convert a string to an integer in Python?", "Python: convert string to int?"),
    (
        "What is the largest planet in the solar system?",
        "Which planet in our solar system is the biggest?",
    ),
    ("Summarize the plot of Hamlet.", "Give me a summary of Hamlet's plot."),
    ("What does HTTP stand for?", "What is HTTP short for?"),
    ("How many days are in a leap year?", "How many days does a leap year have?"),
    ("What is the square root of 144?", "What's the square root of 144?"),
    ("Who painted the Mona Lisa?", "Which artist painted the Mona Lisa?"),
    ("How do I make a cup of tea?", "What are the steps to make a cup of tea?"),
]

NON_PARAPHRASES: list[tuple[str, str]] = [
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How do I reverse a list in Python?", "How do I reverse a list in Java?"),
    ("What is the boiling point of water?", "What is the freezing point of water?"),
    ("Who wrote Pride and Prejudice?", "Who wrote War and Peace?"),
    ("How many legs does a spider have?", "How many legs does an ant have?"),
    ("Translate 'good morning' into Spanish.", "Translate 'good morning' into French."),
    ("What is the speed of light?", "What is the speed of sound?"),
    ("Explain what photosynthesis is.", "Explain what respiration is."),
    ("What is the tallest mountain in the world?", "What is the longest river in the world?"),
    ("How do I install numpy?", "How do I uninstall numpy?"),
    ("What time zone is Tokyo in?", "What time zone is London in?"),
    ("Give me a synonym for happy.", "Give me an antonym for happy."),
    (
        "How do I convert a string to an integer in Python?",
        "How do I convert an integer to a string in Python?",
    ),
    (
        "What is the largest planet in the solar system?",
        "What is the smallest planet in the solar system?",
    ),
    ("Summarize the plot of Hamlet.", "Summarize the plot of Macbeth."),
    ("What does HTTP stand for?", "What does FTP stand for?"),
    ("How many days are in a leap year?", "How many days are in February?"),
    ("What is the square root of 144?", "What is the square root of 169?"),
    ("Who painted the Mona Lisa?", "Who painted The Starry Night?"),
    ("How do I make a cup of tea?", "How do I make a cup of coffee?"),
]
