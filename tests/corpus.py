"""A seeded, play-shaped English corpus over Tiny Shakespeare's 65 characters, for the tests.

Tests must not need Tiny Shakespeare (it may not be committed, and CI cannot download it), yet
they pin numbers that hang on its vocabulary: 65 tokens, 27,840 smoke parameters, prompts such
as "O God, O God!". So the text is generated from a small grammar whose character set is exactly
VOCAB, and make_text checks that it is. Speeches of templated sentences give word, phrase and
line structure a small GPT learns in a hundred steps.
"""

from __future__ import annotations

import random
import string

# Tiny Shakespeare's characters, sorted as CharTokenizer sorts them.
VOCAB = "\n !$&',-.3:;?" + string.ascii_uppercase + string.ascii_lowercase

# One speaker per capital letter: headings in capitals then hold all 26.
NAMES = (
    "Antonio Bianca Claudio Dromio Emilia Falstaff Gonzalo Hermione Iago Juliet Katharina "
    "Leontes Miranda Nerissa Olivia Prospero Quince Romeo Sebastian Titania Ulysses Viola "
    "Warwick Xanthippe Yorick Zenobia"
).split()

NOUNS = """
king queen duke lord lady prince knight friend foe father mother brother sister son daughter
heart soul mind eye hand tongue face blood breath voice grave crown throne sword field house
night day morning evening sun moon star heaven earth sea storm wind fire water rose garden
love hate grief joy fear hope honour shame truth faith grace mercy justice peace war fortune
death life time world state land city gate tower wall door letter word oath jest song tale
heir servant master fool soldier army battle horse ship gold silver jewel ring cup bread wine
sleep dream ghost spirit wonder beauty virtue pride zeal quarrel sorrow wrath youth age maid
""".split()

ADJECTIVES = """
good noble gentle sweet fair foul dear proud brave bold cruel kind true false young old poor
rich wise mad sad merry happy wretched cursed blessed royal loyal honest wicked holy bloody
dark bright cold warm pale strange great little sovereign quiet lazy jealous vexed frozen
well-born ill-starr'd sweet-faced high-minded low-voiced
""".split()

# Base forms: a modal comes before them, so no verb needs conjugating.
VERBS = """
love hate know see hear speak find keep take give bring leave follow serve kill save bless
curse fear trust answer remember forget praise pardon banish crown wed seek meet greet call
honour wrong mock defend betray question vex
""".split()

INTRANSITIVE = "weep sleep die live rest wait stay fly fall laugh sing pray fight wake".split()
MODALS = "shall will must may would should could dost doth".split()
SUBJECTS = "I we you they he she thou".split()
DETERMINERS = "the the my thy his her our your this that no".split()
PREPOSITIONS = "with from to for in upon against without before after by".split()
ADVERBS = "now here there soon again indeed too well ever never".split()
INTERJECTIONS = "O Alas Fie Marry Nay Ay Ha Come Hark Lo".split()
CONTRACTIONS = "'tis 'twas ne'er o'er e'en is't".split()


class _Grammar:
    """Sentence templates over the word lists, drawing from one seeded random.Random."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def name(self) -> str:
        return self.r.choice(NAMES)

    def np(self) -> str:
        r = self.r.random()
        if r < 0.15:
            return self.name()
        if r < 0.55:
            return f"{self.r.choice(DETERMINERS)} {self.r.choice(NOUNS)}"
        det, adj, noun = (self.r.choice(w) for w in (DETERMINERS, ADJECTIVES, NOUNS))
        return f"{det} {adj} {noun}"

    def clause(self) -> str:
        r, c = self.r.random(), self.r.choice
        if r < 0.45:
            return f"{c(SUBJECTS)} {c(MODALS)} {c(VERBS)} {self.np()}"
        if r < 0.65:
            return f"{self.np()} {c(MODALS)} {c(INTRANSITIVE)} {c(ADVERBS)}"
        if r < 0.8:
            return f"{c(SUBJECTS)} {c(MODALS)} {c(VERBS)} {self.np()} {c(PREPOSITIONS)} {self.np()}"
        if r < 0.9:
            return f"{c(CONTRACTIONS)} {self.np()} that {c(MODALS)} {c(INTRANSITIVE)}"
        return f"{self.np()} is {c(ADJECTIVES)}"

    def sentence(self) -> str:
        r, c = self.r.random(), self.r.choice
        if r < 0.3:
            s = f"{self.clause()}."
        elif r < 0.42:
            s = f"{self.clause()}, and {self.clause()}."
        elif r < 0.52:
            s = f"{self.clause()}; {self.clause()}."
        elif r < 0.62:
            s = f"{c(INTERJECTIONS)}, {self.name()}! {self.clause()}."
        elif r < 0.7:
            s = f"O {c(ADJECTIVES)} {c(NOUNS)}, {self.clause()}!"
        elif r < 0.78:
            s = f"wilt thou {c(VERBS)} {self.np()}?"
        elif r < 0.85:
            s = f"why {c(MODALS)} {c(SUBJECTS)} {c(VERBS)} {self.np()}?"
        elif r < 0.92:
            s = f"come, {c(VERBS)} {self.np()}: {self.clause()}."
        elif r < 0.99:
            s = f"what {c(NOUNS)} is this?"
        else:  # the rare characters recur, not once at the top only
            s = f"here's $3 & a {c(NOUNS)} for thee."
        return s[0].upper() + s[1:]

    def speech(self) -> str:
        """A speaker in capitals, then a few sentences wrapped to verse-like lines."""
        words = " ".join(self.sentence() for _ in range(self.r.randint(1, 5))).split(" ")
        width, lines, line = self.r.randint(36, 60), [], ""
        for w in words:
            if line and len(line) + 1 + len(w) > width:
                lines.append(line)
                line = w
            else:
                line = f"{line} {w}" if line else w
        lines.append(line)
        return f"{self.name().upper()}:\n" + "\n".join(lines) + "\n\n"


# A fixed opening holding all 65 characters, so any text of at least this length has VOCAB.
PROLOGUE = (
    "CHORUS:\n"
    + " ".join(NAMES)
    + ",\nthe quick brown fox jumps over the lazy dog; is't not $3 & more? Well-met! Go: go.\n\n"
)


def make_text(n_chars: int = 200_000, seed: int = 0) -> str:
    """Exactly n_chars of play-like text over exactly VOCAB; the same seed gives the same text."""
    if n_chars < len(PROLOGUE):
        raise ValueError(f"n_chars must be at least {len(PROLOGUE)}, got {n_chars}")
    grammar, parts, size = _Grammar(seed), [PROLOGUE], len(PROLOGUE)
    while size < n_chars:
        parts.append(grammar.speech())
        size += len(parts[-1])
    text = "".join(parts)[:n_chars]
    assert "".join(sorted(set(text))) == VOCAB, sorted(set(text) ^ set(VOCAB))
    return text
