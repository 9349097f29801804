"""Phone -> mouth shape: open / width / round / closed targets and a coarticulation dominance.

Values follow the usual viseme groupings (Disney/Preston Blair, MPEG-4 FAP visemes): jaw opening
follows vowel height (F1), width follows frontness (F2) and rounding, bilabials shut the lips.
Dominance (Cohen & Massaro 1993) says how strongly a phone imposes its shape on its neighbours:
bilabials and vowels are strong, tongue consonants borrow the jaw of the surrounding vowels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    open: float
    width: float
    round: float
    closed: float = 0.0
    dominance: float = 1.0


REST = Shape(0.0, 0.0, 0.0, 0.0, 0.6)

SHAPES: dict[str, Shape] = {
    # vowels: open, width, round
    "AA": Shape(1.00, 0.10, 0.00), "AE": Shape(0.85, 0.55, 0.00), "AH": Shape(0.70, 0.15, 0.00),
    "AO": Shape(0.80, -0.25, 0.55), "AW": Shape(0.85, 0.00, 0.45), "AY": Shape(0.85, 0.35, 0.00),
    "EH": Shape(0.65, 0.50, 0.00), "ER": Shape(0.45, -0.10, 0.40), "EY": Shape(0.55, 0.65, 0.00),
    "IH": Shape(0.45, 0.55, 0.00), "IY": Shape(0.30, 0.90, 0.00), "OW": Shape(0.60, -0.35, 0.80),
    "OY": Shape(0.65, -0.20, 0.60), "UH": Shape(0.40, -0.30, 0.60), "UW": Shape(0.30, -0.60, 1.00),
    # bilabials: lips shut, strong
    "P": Shape(0.0, 0.0, 0.0, 1.0, 3.0), "B": Shape(0.0, 0.0, 0.0, 1.0, 3.0), "M": Shape(0.0, 0.0, 0.0, 1.0, 3.0),
    # labiodentals: lower lip to teeth
    "F": Shape(0.10, 0.20, 0.00, 0.0, 2.0), "V": Shape(0.10, 0.20, 0.00, 0.0, 2.0),
    # rounded consonants
    "W": Shape(0.15, -0.70, 1.00, 0.0, 1.5), "R": Shape(0.25, -0.20, 0.45, 0.0, 0.6),
    "SH": Shape(0.25, -0.20, 0.55, 0.0, 0.8), "ZH": Shape(0.25, -0.20, 0.55, 0.0, 0.8),
    "CH": Shape(0.25, -0.20, 0.55, 0.0, 0.8), "JH": Shape(0.25, -0.20, 0.55, 0.0, 0.8),
    # tongue consonants: weak, they take the jaw of their vowels
    "TH": Shape(0.25, 0.30, 0.00, 0.0, 0.5), "DH": Shape(0.25, 0.30, 0.00, 0.0, 0.5),
    "T": Shape(0.25, 0.35, 0.00, 0.0, 0.35), "D": Shape(0.25, 0.35, 0.00, 0.0, 0.35),
    "N": Shape(0.22, 0.30, 0.00, 0.0, 0.35), "L": Shape(0.30, 0.25, 0.00, 0.0, 0.3),
    "S": Shape(0.18, 0.55, 0.00, 0.0, 0.6), "Z": Shape(0.18, 0.55, 0.00, 0.0, 0.6),
    "K": Shape(0.30, 0.20, 0.00, 0.0, 0.3), "G": Shape(0.30, 0.20, 0.00, 0.0, 0.3),
    "NG": Shape(0.28, 0.20, 0.00, 0.0, 0.3), "Y": Shape(0.22, 0.65, 0.00, 0.0, 0.6),
    "HH": Shape(0.45, 0.10, 0.00, 0.0, 0.1),  # /h/ is shaped like the vowel that follows
    "SIL": REST,
}

BILABIALS = frozenset({"P", "B", "M"})
VOWELS = frozenset(k for k in SHAPES if len(k) == 2 and k[0] in "AEIOU")


def shape(label: str) -> Shape:
    """Shape of an ARPAbet phone; unknown labels (noise) rest."""
    return SHAPES.get(label, REST)
