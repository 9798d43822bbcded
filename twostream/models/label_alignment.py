"""Label alignment: a published checkpoint's class names onto the project's class table.

This docstring is where the rule is written down; the documentation renders it (docs/pretrained-segmenters.md links
to it) instead of repeating it.

A segmentation checkpoint numbers its classes its own way. ADE20K checkpoints on the Hugging Face hub count 150
classes from ``0 = wall``; ADEChallengeData2016, and so the project's table (:func:`twostream.data.classes.ade20k150`),
counts them from ``1 = wall`` with ``0 = other``. Shifting by one because "it is ADE" breaks silently on a checkpoint
with another order or another label set, so the mapping is decided by *names*:

1. Names are normalised (lower case; ``-``, ``_`` and runs of whitespace become one space) and split into synonyms
   at ``;`` and, on the checkpoint side, ``,`` (detectron2 style ``"rock, stone"``). The project's names list
   synonyms after ``;`` (``"pool table;billiard table;snooker table"``); a name is also read as the sequence of all
   its words, which keeps the matching right for tables written objectInfo150.csv style (``"pool;table;..."``).
2. A checkpoint class matches a project class, strongest first: (5) the whole name is the same word sequence;
   (4) one of its synonyms is the project's first name (``"pot"`` -> ``pot;flowerpot``); (3) ... another project
   synonym (``"tv"`` -> ``television;...;tv``); (2) ... a prefix of the project's words; (1) ... occurs inside them.
   Longer synonyms beat shorter ones at the same strength.
3. Pairs are assigned greedily, strongest first, one checkpoint class per project class: a pair is taken when neither
   side has another candidate at that strength (or the checkpoint class has only this candidate and no other such
   class wants it). A tie is broken only by the offset most assigned pairs share (``+1`` for ADE checkpoints); a tie
   it does not break leaves the class unmatched rather than guessed.
4. **The rule:** if at least :data:`ALIGN_MIN_FRACTION` (90%) of the checkpoint's classes match distinct project
   classes, the segmenter *aligns*: its outputs use the project table, checkpoint channel ``i`` feeds project channel
   ``mapping[i]`` (``i + 1`` for every ADE-150 checkpoint), project classes without a source get :data:`LOW_LOGIT`,
   and the few unmatched checkpoint classes are folded into ``other`` (log-sum-exp of their logits) and logged by name.
   Otherwise the segmenter keeps its **own table** (a COCO or Cityscapes checkpoint, say), named ``hf:<model>`` or
   ``d2:<dataset>``: ``0 = other`` followed by the checkpoint's names in order (channel ``i`` -> label ``i + 1``), a
   generated palette and the stuff flags that are known (from detectron2's metadata, or from the ADE class of the
   same name); the names that did not match are logged. That table travels with the segmenter into the scene graphs,
   the GNN's class embedding, the JSON output (embedded in the file) and the visualizer. Label 0 stays ``other`` in
   every table, so scene-graph building (``ignore_label0``) and ignore handling mean the same everywhere.

``other`` has no source in an ADE-150 checkpoint (they never predict it): it gets :data:`LOW_LOGIT`, a finite
``-1e4`` rather than ``-inf`` so that softmax, cross-entropy and fp16 stay free of NaN.

The decision is kept on the segmenter: ``segmenter.alignment`` is a :class:`LabelAlignment` (``mapping``, ``aligned``,
``matched_fraction``, ``unmatched``). The mapping is tested on the real ADE20K names: the hub's ``id2label``
(``'wall' 0 -> 1``, ``'building' 1 -> 2``, ... ``'flag' 149 -> 150``), objectInfo150.txt / .csv and detectron2's
ADE20K list, each in its own order and shuffled (``tests/test_hf_segmenter.py``, ``tests/test_d2_segmenter.py``).
"""

from __future__ import annotations

import colorsys
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from twostream.data.classes import IGNORE_INDEX, ClassTable

__all__ = [
    "ALIGN_MIN_FRACTION",
    "LOW_LOGIT",
    "LabelAlignment",
    "align_labels",
    "generated_palette",
    "match_names",
    "normalize_name",
    "own_class_table",
]

log = logging.getLogger(__name__)

ALIGN_MIN_FRACTION = 0.9  # share of checkpoint classes that must match the project table for the outputs to align
LOW_LOGIT = -1e4  # logit of a class with no source: exp() underflows to 0, yet finite in fp16 (max 65504)

_SEP_RE = re.compile(r"[-_\s]+")


# --------------------------------------------------------------------------------------------------------------------
# Helpers: names and palettes
# --------------------------------------------------------------------------------------------------------------------


def normalize_name(name: str) -> str:
    """``" Chest-of_drawers "`` -> ``"chest of drawers"``: lower case, ``-``/``_``/whitespace runs -> one space."""
    return _SEP_RE.sub(" ", str(name).lower()).strip()


def _project_synonyms(name: str) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """A project name (synonyms after ``;``) -> (all its words, each synonym's words)."""
    synonyms = [tuple(normalize_name(part).split()) for part in name.split(";")]
    synonyms = [s for s in synonyms if s]
    return tuple(w for s in synonyms for w in s), synonyms


def _source_synonyms(name: str) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """A checkpoint name -> (all its words, each synonym's words); synonyms are split on ``,`` and ``;``."""
    synonyms = [tuple(normalize_name(s).split()) for s in re.split(r"[,;]", str(name))]
    synonyms = [s for s in synonyms if s]
    return tuple(w for s in synonyms for w in s), synonyms


def _contains(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(words[k:k + n] == phrase for k in range(len(words) - n + 1))


Names = tuple[tuple[str, ...], list[tuple[str, ...]]]


def _match_score(source: Names, target: Names) -> tuple[int, int]:
    """(strength 0..5, matched words) of one checkpoint name against one project class; (0, 0) = no match."""
    whole, synonyms = source
    words, target_synonyms = target
    if not whole or not words:
        return (0, 0)
    if whole == words:
        return (5, len(whole))
    best = (0, 0)
    for s in synonyms:
        if s == target_synonyms[0]:
            strength = 4
        elif s in target_synonyms:
            strength = 3
        elif words[: len(s)] == s:
            strength = 2
        elif _contains(words, s):
            strength = 1
        else:
            continue
        best = max(best, (strength, len(s)))
    return best


def generated_palette(num: int, background: int | None = 0) -> np.ndarray:
    """``(num, 3)`` uint8 distinct colours (golden-angle hues, alternating saturation/value); background black."""
    palette = np.zeros((num, 3), dtype=np.uint8)
    for i in range(num):
        h = (i * 0.618033988749895) % 1.0
        s = 0.85 if i % 2 else 0.6
        v = 0.95 if (i // 2) % 2 else 0.75
        palette[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)]
    if background is not None and 0 <= background < num:
        palette[background] = 0
    return palette


def own_class_table(name: str, names: Sequence[str], stuff: Sequence[bool] | None = None) -> ClassTable:
    """A checkpoint's own table: label 0 = ``other``, then ``names`` in channel order; a generated palette.

    Args:
        name: identifier of the label set, e.g. ``"hf:facebook/mask2former-swin-tiny-coco-panoptic"``.
        names: the checkpoint's class names, channel ``i`` -> label ``i + 1``.
        stuff: per name, whether it is amorphous stuff; ``None`` = not known (all ``False``).
    """
    if stuff is not None and len(stuff) != len(names):
        raise ValueError(f"own_class_table {name}: {len(stuff)} stuff flags for {len(names)} names")
    flags = (False, *(bool(s) for s in stuff)) if stuff is not None else ()
    return ClassTable(name=name, names=("other", *(str(n).strip() for n in names)),
                      palette=generated_palette(len(names) + 1), stuff=flags, background=0)


# --------------------------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------------------------


def match_names(source_names: Sequence[str], table: ClassTable) -> list[int]:
    """Match checkpoint class names to labels of ``table`` by name (see the module docstring for the rule).

    Returns:
        per checkpoint class, the matched label of ``table`` or ``-1``; matched labels are distinct.
    """
    sources = [_source_synonyms(n) for n in source_names]
    targets = [_project_synonyms(n) for n in table.names]
    containing: dict[str, set[int]] = {}  # word -> project classes whose names contain it (prunes the pairs)
    for p, (words, _) in enumerate(targets):
        for word in words:
            containing.setdefault(word, set()).add(p)
    by_score: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, src in enumerate(sources):
        for p in sorted(set().union(*(containing.get(s[0], ()) for s in src[1]))):
            score = _match_score(src, targets[p])
            if score[0]:
                by_score.setdefault(score, []).append((i, p))

    mapping = [-1] * len(source_names)
    taken: set[int] = set()
    tied: set[int] = set()  # checkpoint classes whose best candidates tied: never matched by a weaker rule

    def assign_unique(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Assign pairs whose checkpoint class and project class both occur once; return what is left."""
        while True:
            pairs = [(i, p) for i, p in pairs if mapping[i] < 0 and p not in taken]
            n_src, n_tgt = Counter(i for i, _ in pairs), Counter(p for _, p in pairs)
            unique = [(i, p) for i, p in pairs if n_src[i] == 1 and n_tgt[p] == 1]
            if not unique:  # a class with a single candidate takes it unless another such class wants it too
                single = Counter(p for i, p in pairs if n_src[i] == 1)
                unique = [(i, p) for i, p in pairs if n_src[i] == 1 and single[p] == 1]
            if not unique:
                return pairs
            for i, p in unique:
                mapping[i] = p
                taken.add(p)

    for score in sorted(by_score, reverse=True):
        pairs = assign_unique([(i, p) for i, p in by_score[score] if i not in tied])
        offsets = Counter(p - i for i, p in enumerate(mapping) if p >= 0)
        if pairs and offsets:
            offset, count = offsets.most_common(1)[0]
            if count * 2 > sum(offsets.values()):  # a clear majority: the checkpoint follows one order
                assign_unique([(i, p) for i, p in pairs if p - i == offset])
                pairs = assign_unique(pairs)
        tied.update(i for i, _ in pairs if mapping[i] < 0)
    return mapping


# --------------------------------------------------------------------------------------------------------------------
# The alignment object
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelAlignment:
    """How a checkpoint's output channels become labels of ``table``.

    Attributes:
        source_names: the checkpoint's class names, one per output channel ``C``.
        table: the class table the segmenter's outputs refer to (``K`` labels).
        mapping: per checkpoint channel, its label in ``table``; ``-1`` = folded into ``table.background``.
        aligned: ``True`` when ``table`` is the project's table; ``False`` for the checkpoint's own table.
        matched_fraction: share of checkpoint classes whose name matched the project table.
        unmatched: checkpoint names that matched no project class (folded into ``other`` when aligned).
    """

    source_names: tuple[str, ...]
    table: ClassTable
    mapping: tuple[int, ...]
    aligned: bool
    matched_fraction: float
    unmatched: tuple[str, ...]

    def __post_init__(self) -> None:
        assert len(self.mapping) == len(self.source_names)
        assert all(-1 <= m < len(self.table) for m in self.mapping)

    @property
    def num_source(self) -> int:
        return len(self.source_names)

    def _fold_channels(self) -> list[int]:
        bg = self.table.background
        return [c for c, m in enumerate(self.mapping) if m < 0 or (bg is not None and m == bg)]

    def gather_index(self) -> Tensor:
        """``(K,)`` int64: table label ``k`` reads channel ``index[k]`` of ``[logits (C), folded (1), low (1)]``."""
        c = self.num_source
        index = torch.full((len(self.table),), c + 1, dtype=torch.long)
        fold = self._fold_channels()
        for src, dst in enumerate(self.mapping):
            if dst >= 0:
                index[dst] = src
        if fold and self.table.background is not None:
            index[self.table.background] = c
        return index

    @property
    def unsourced(self) -> Tensor:
        """``(K,)`` bool: table labels no checkpoint channel feeds (they get :data:`LOW_LOGIT`)."""
        return self.gather_index() == self.num_source + 1

    def to_table(self, logits: Tensor) -> Tensor:
        """``(B, C, H, W)`` checkpoint logits -> ``(B, K, H, W)`` logits over ``self.table`` (differentiable).

        Mapped channels are copied; labels with no source get :data:`LOW_LOGIT`; channels folded into the background
        combine by log-sum-exp (their probabilities add).
        """
        if logits.shape[1] != self.num_source:
            raise ValueError(f"LabelAlignment: logits have {logits.shape[1]} channels, the checkpoint names "
                             f"{self.num_source} classes")
        b, _, h, w = logits.shape
        low = logits.new_full((b, 1, h, w), LOW_LOGIT)
        fold = self._fold_channels()
        if len(fold) > 1:
            folded = torch.logsumexp(logits[:, fold], dim=1, keepdim=True)  # (B, 1, H, W)
        elif fold:
            folded = logits[:, fold]
        else:
            folded = low
        extended = torch.cat([logits, folded, low], dim=1)  # (B, C + 2, H, W)
        return extended.index_select(1, self.gather_index().to(logits.device))

    def to_table_probs(self, probs: Tensor) -> Tensor:
        """``(..., C)`` class probabilities -> ``(..., K)``: mapped copied, folded summed, unsourced 0."""
        if probs.shape[-1] != self.num_source:
            raise ValueError(f"LabelAlignment: probabilities have {probs.shape[-1]} classes, the checkpoint names "
                             f"{self.num_source}")
        zero = probs.new_zeros((*probs.shape[:-1], 1))
        fold = self._fold_channels()
        folded = probs[..., fold].sum(dim=-1, keepdim=True) if fold else zero
        extended = torch.cat([probs, folded, zero], dim=-1)  # (..., C + 2)
        return extended.index_select(-1, self.gather_index().to(probs.device))

    def table_targets(self, target: Tensor) -> Tensor:
        """``(B, H, W)`` int64 labels of ``self.table`` with the labels a loss cannot supervise set to
        ``IGNORE_INDEX``: the background (``other``: an ADE checkpoint has no such class; folded channels are not
        one class) and labels fed by no checkpoint channel. A cross-entropy on :meth:`to_table` logits with these
        targets equals the checkpoint's own cross-entropy on its channels."""
        keep = torch.zeros(max(len(self.table), IGNORE_INDEX + 1), dtype=torch.bool)
        counts = Counter(m for m in self.mapping if m >= 0)
        for dst, n in counts.items():
            keep[dst] = n == 1 and dst != self.table.background
        keep = keep.to(target.device)
        target = target.long()
        return torch.where(keep[target.clamp(0, len(keep) - 1)], target, IGNORE_INDEX)


def align_labels(source_names: Sequence[str], project_table: ClassTable, *, table_name: str,
                 stuff: Sequence[bool] | None = None, min_fraction: float = ALIGN_MIN_FRACTION) -> LabelAlignment:
    """Decide how a checkpoint's classes map onto ``project_table`` (the rule is in the module docstring).

    Args:
        source_names: the checkpoint's class names in channel order.
        project_table: the project's table (ADE20K-150).
        table_name: name of the checkpoint's own table if it is not aligned (``"hf:<model>"``, ``"d2:<dataset>"``).
        stuff: per checkpoint class, whether it is stuff (detectron2 metadata knows); ``None``: taken from the
            matched project class, else ``False``.
        min_fraction: the share of matched checkpoint classes needed to align.

    Returns:
        a :class:`LabelAlignment`; unmatched names are logged (a warning when they fold into ``other``).
    """
    names = tuple(str(n) for n in source_names)
    if not names:
        raise ValueError(f"{table_name}: the checkpoint names no classes (empty id2label / metadata)")
    matched = match_names(names, project_table)
    n_matched = sum(m >= 0 for m in matched)
    fraction = n_matched / len(names)
    unmatched = tuple(n for n, m in zip(names, matched) if m < 0)
    if fraction >= min_fraction:
        if unmatched:
            log.warning("%s: %d of %d class names match %s; aligned. Unmatched (their pixels become '%s'): %s",
                        table_name, n_matched, len(names), project_table.name,
                        project_table.short_name(project_table.background or 0), ", ".join(map(repr, unmatched)))
        else:
            log.info("%s: all %d class names match %s; aligned (checkpoint channel i -> label mapping[i])",
                     table_name, len(names), project_table.name)
        return LabelAlignment(source_names=names, table=project_table, mapping=tuple(matched), aligned=True,
                              matched_fraction=fraction, unmatched=unmatched)
    if stuff is None:
        stuff = [bool(project_table.stuff[m]) if m >= 0 else False for m in matched]
    table = own_class_table(table_name, names, stuff)
    log.warning("%s: only %d of %d class names (%.0f%%, below %.0f%%) match %s: using the checkpoint's own table "
                "(%d labels, 0 = other)", table_name, n_matched, len(names), 100 * fraction, 100 * min_fraction,
                project_table.name, len(table))
    if unmatched:
        log.info("%s: names not in %s: %s", table_name, project_table.name, ", ".join(map(repr, unmatched)))
    return LabelAlignment(source_names=names, table=table, mapping=tuple(range(1, len(names) + 1)), aligned=False,
                          matched_fraction=fraction, unmatched=unmatched)
