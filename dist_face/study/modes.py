"""The sizes of the quick and full loss studies."""

from __future__ import annotations

from dataclasses import dataclass, field

from dist_face.study.train import Budget


@dataclass(frozen=True)
class StudyMode:
    """Data sizes, budget and seeds of one study mode."""

    name: str
    train_identities: int
    train_images: int
    """Images per training identity."""
    held_out_identities: int
    held_out_images: int
    """Images per held-out identity."""
    seeds: tuple[int, ...]
    budget: Budget
    toy_steps: int
    """Steps of each toy 2-D run (10 identities)."""
    toy_budget: Budget = field(init=False)

    def __post_init__(self) -> None:
        toy = Budget(steps=self.toy_steps, batch=40, embedding_size=2, lr=self.budget.lr)
        object.__setattr__(self, "toy_budget", toy)


QUICK = StudyMode(
    name="quick",
    train_identities=40,
    train_images=8,
    held_out_identities=30,
    held_out_images=6,
    seeds=(0, 1, 2),
    budget=Budget(steps=120, batch=48),
    toy_steps=80,
)
FULL = StudyMode(
    name="full",
    train_identities=100,
    train_images=12,
    held_out_identities=50,
    held_out_images=8,
    seeds=(0, 1, 2),
    budget=Budget(steps=800, batch=64),
    toy_steps=300,
)
