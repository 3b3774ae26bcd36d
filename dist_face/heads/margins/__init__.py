"""Margins: each turns projections on class centers into logits."""

from dist_face.heads.margins import (  # noqa: F401  (registration)
    adaface,
    curricular,
    elastic,
    magface,
    multiplicative,
    subcenter,
    uniface,
)
