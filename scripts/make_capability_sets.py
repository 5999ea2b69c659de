"""Writes the project's capability-check sets (deterministic): fact completions for P@K and a
general-knowledge A/B set. Run: python scripts/make_capability_sets.py"""

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "steerlab" / "evaluate" / "data"

FACTS = [
    ("The capital of France is", " Paris"), ("The capital of Japan is", " Tokyo"),
    ("The capital of Italy is", " Rome"), ("The capital of Germany is", " Berlin"),
    ("The capital of Spain is", " Madrid"), ("The capital of England is", " London"),
    ("The capital of Russia is", " Moscow"), ("The capital of Egypt is", " Cairo"),
    ("The largest planet in the solar system is", " Jupiter"), ("Water is made of hydrogen and", " oxygen"),
    ("The opposite of hot is", " cold"), ("The opposite of up is", " down"),
    ("Monday, Tuesday,", " Wednesday"), ("January, February,", " March"),
    ("One, two, three, four,", " five"), ("The sun rises in the", " east"),
    ("Romeo and Juliet was written by William", " Shakespeare"), ("The chemical symbol for gold is", " Au"),
    ("A baby cat is called a", " kitten"), ("A baby dog is called a", " puppy"),
    ("The color of the clear sky is", " blue"), ("Grass is usually the colour", " green"),
    ("Ice is frozen", " water"), ("The Eiffel Tower is in", " Paris"),
    ("The Statue of Liberty is in New", " York"), ("Bees make", " honey"),
    ("The freezing point of water is zero degrees", " Celsius"), ("Spiders have eight", " legs"),
    ("The first man on the Moon was Neil", " Armstrong"), ("The Great Wall is in", " China"),
    ("Cows produce", " milk"), ("The Pacific is an", " ocean"),
    ("Apples grow on", " trees"), ("We breathe in", " oxygen"),
    ("The primary language of Brazil is", " Portuguese"), ("Shakespeare was born in", " England"),
    ("The fastest land animal is the", " cheetah"), ("The largest ocean on Earth is the", " Pacific"),
    ("A triangle has three", " sides"), ("The currency of Japan is the", " yen"),
]

QUIZ = [
    ("What is the capital of France?", "Paris", "Lyon"), ("How many legs does a spider have?", "Eight", "Six"),
    ("Which planet is known as the red planet?", "Mars", "Venus"),
    ("What do bees make?", "Honey", "Silk"), ("Which gas do plants take in from the air?", "Carbon dioxide", "Helium"),
    ("What is frozen water called?", "Ice", "Steam"), ("How many days are in a week?", "Seven", "Five"),
    ("Which animal is known for its long neck?", "Giraffe", "Hippo"),
    ("What is the largest ocean?", "The Pacific", "The Arctic"), ("Who wrote Hamlet?", "Shakespeare", "Dickens"),
    ("What is 2 + 2?", "4", "5"), ("What colour are ripe bananas?", "Yellow", "Purple"),
    ("Which is a mammal?", "A whale", "A shark"), ("What is the boiling point of water at sea level?",
                                                   "100 degrees Celsius", "50 degrees Celsius"),
    ("What do you call a baby cat?", "A kitten", "A calf"), ("Which continent is Egypt in?", "Africa", "Europe"),
    ("What is the main language of Mexico?", "Spanish", "French"), ("Which is the closest star to Earth?",
                                                                     "The Sun", "Sirius"),
    ("How many hours are in a day?", "24", "12"), ("What is the chemical symbol for water?", "H2O", "CO2"),
    ("Which instrument has black and white keys?", "Piano", "Violin"), ("What shape has four equal sides?",
                                                                         "A square", "A triangle"),
    ("Which month comes after June?", "July", "May"), ("What do caterpillars become?", "Butterflies", "Beetles"),
    ("Which organ pumps blood?", "The heart", "The lungs"), ("What is the capital of Japan?", "Tokyo", "Osaka"),
    ("Which metal is liquid at room temperature?", "Mercury", "Iron"), ("How many continents are there?",
                                                                         "Seven", "Nine"),
    ("What is the tallest animal?", "The giraffe", "The elephant"), ("What is 10 times 10?", "100", "1000"),
    ("Which season is the coldest?", "Winter", "Summer"), ("What do we call a word that means the opposite?",
                                                           "An antonym", "A synonym"),
    ("Which planet do we live on?", "Earth", "Saturn"), ("What is the largest desert in the world?",
                                                         "Antarctica", "The Gobi"),
    ("Where is the Eiffel Tower?", "Paris", "Rome"), ("What is the freezing point of water in Celsius?", "0", "10"),
    ("Which bird is a symbol of peace?", "The dove", "The crow"), ("How many sides does a hexagon have?", "Six",
                                                                   "Eight"),
    ("Which sense do ears give us?", "Hearing", "Smell"), ("What is the opposite of 'ancient'?", "Modern", "Old"),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "facts.jsonl").open("w") as fh:
        for prompt, answer in FACTS:
            fh.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
    with (OUT / "general_knowledge.jsonl").open("w") as fh:
        for i, (q, right, wrong) in enumerate(QUIZ):
            right_first = (i // 2) % 2 == 0
            a, b = (right, wrong) if right_first else (wrong, right)
            fh.write(json.dumps({"question": f"{q}\n\nChoices:\n(A) {a}\n(B) {b}",
                                 "answer_matching_behavior": "(A)" if right_first else "(B)",
                                 "answer_not_matching_behavior": "(B)" if right_first else "(A)"}) + "\n")
    print(len(FACTS), len(QUIZ))


if __name__ == "__main__":
    main()
