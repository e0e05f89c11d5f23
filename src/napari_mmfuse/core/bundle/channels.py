"""Match a model's input channel names (a bundle's ``channel_def``) to the user's images by name."""

from __future__ import annotations

import re

#: canonical modality -> names it goes by (lower case, separators removed)
SYNONYMS = {
    "T1": ("t1", "t1w", "t1n", "t1native", "t1pre", "t1weighted"),
    "T1c": ("t1c", "t1ce", "t1gd", "t1cgd", "t1post", "t1contrast", "t1wce", "t1wgd", "t1cpost"),
    "T2": ("t2", "t2w", "t2weighted"),
    "FLAIR": ("flair", "t2flair", "t2f", "t2wflair"),
    "CT": ("ct",),
    "PET": ("pet",),
}


def _pieces(name: str) -> list[str]:
    """Lower-case tokens of ``name`` and their joins with their neighbours ("T2-FLAIR" -> t2, flair, t2flair)."""
    tokens = [t for t in re.split(r"[^0-9a-z]+", name.lower()) if t]
    joined = ["".join(tokens[i : i + n]) for n in (2, 3) for i in range(len(tokens) - n + 1)]
    return tokens + joined


def modality_of(name: str) -> str | None:
    """The canonical modality a layer or channel name names (longest synonym wins), or None."""
    pieces = set(_pieces(name))
    scores = {modality: max((len(s) for s in synonyms if s in pieces), default=0)
              for modality, synonyms in SYNONYMS.items()}
    best = max(scores.values())
    winners = [modality for modality, score in scores.items() if score == best]
    return winners[0] if best and len(winners) == 1 else None


def match_channels(wanted, names) -> list[int | None]:
    """Which of ``names`` (the user's images) feeds each of the ``wanted`` channels.

    A channel matches an image when both name the same modality (T1, T1c/T1ce/T1Gd, T2,
    FLAIR/T2-FLAIR, CT, PET; case and separators ignored) or, for other names, when the
    image's name equals the channel's or holds it as a word.

    Parameters
    ----------
    wanted : sequence of str
        The model's channel names, in its channel order.
    names : sequence of str
        The images' names.

    Returns
    -------
    list of int or None
        For each wanted channel the index into ``names``, None when no image or several
        match (the user has to pick).
    """
    wanted, names = list(wanted), list(names)
    if len(wanted) == 1 and len(names) == 1:
        return [0]
    modalities = [modality_of(name) for name in names]

    def matches(channel: str) -> list[int]:
        modality = modality_of(channel)
        if modality is not None:
            return [i for i, m in enumerate(modalities) if m == modality]
        key = channel.lower().strip()
        return [i for i, name in enumerate(names) if name.lower().strip() == key or key in _pieces(name)]

    found = [matches(channel) for channel in wanted]
    counts = [sum(index in f for f in found) for index in range(len(names))]
    return [f[0] if len(f) == 1 and counts[f[0]] == 1 else None for f in found]
