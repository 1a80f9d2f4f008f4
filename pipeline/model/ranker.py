"""The paper's ranker (§3.2) and loss (§3.3).

Three pair MLPs — name (ms, es), context (mc, ec), type (mt, et) — each map their
concatenated pair to a combined representation; a final MLP maps the concatenation of
those to one score in [-1, 1] (tanh). ReLU and dropout at every layer.

The first layer of a pair MLP is a Linear over [mention; entity]. It is computed as
W_m·mention + W_e·entity + b — the same function — so each mention and each distinct
entity of a batch is projected once instead of once per (mention, candidate) pair.

With `RankerShape.nil_candidate` the ranker also scores a "none of the above" option per
mention (`Ranker.nil_scores`), the idea of ReFinED (Ayoola et al., "ReFinED: An Efficient
Zero-shot-capable Approach to End-to-End Entity Linking", NAACL 2022 industry track),
which scores a NOTA candidate beside the real ones and trains it on mentions whose gold
is not in the KB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.core.schema import TRIAGE_SOURCES

# Per (mention, candidate) triage evidence: summed score, then one flag per source.
TRIAGE_WIDTH = 1 + len(TRIAGE_SOURCES)


@dataclass(frozen=True)
class RankerShape:
    """Everything that fixes the ranker's parameters; stored in checkpoints."""

    features: tuple[str, ...]
    vector_size: int
    mention_types: int
    entity_types: int
    name_hidden: tuple[int, ...]
    context_hidden: tuple[int, ...]
    type_hidden: tuple[int, ...]
    final_hidden: tuple[int, ...]
    dropout: float
    triage_hidden: tuple[int, ...] = (16,)
    # The learned NIL option (`Ranker.nil_scores`); False in checkpoints made before it existed.
    nil_candidate: bool = False
    # How the name and context pair MLPs see a pair (`PairMLP`): "concat" (the paper's [mention; entity])
    # "product" ([mention; mention * entity]) or "similarity" ([mention; cosine]); "concat" in checkpoints made
    # before it existed.
    pair_input: str = "concat"

    def sizes(self, feature: str) -> tuple[int, int, tuple[int, ...]]:
        """(mention width, entity width, hidden sizes) of a feature's pair MLP."""
        if feature == "type":
            return self.mention_types, self.entity_types, self.type_hidden
        hidden = self.name_hidden if feature == "name" else self.context_hidden
        return self.vector_size, self.vector_size, hidden


def mlp(in_size: int, hidden: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_size, size), nn.ReLU(), nn.Dropout(dropout)]
        in_size = size
    return nn.Sequential(*layers), in_size


PAIR_INPUTS = ("concat", "product", "similarity")


class PairMLP(nn.Module):
    """MLP over a (mention, entity) pair whose first layer is split by side (see module doc).

    `form` says what the first layer reads besides the mention: "concat", the entity (the
    paper's [mention; entity]); "product", mention * entity; "similarity", their cosine alone.
    With the last two no weight scores an entity on its own, so a ranker trained on some
    entities cannot learn to prefer them over ones it never saw (on MEANTIME's entity-disjoint
    split, 62 of the 73 wrong links of unseen entities went to a seen one with "concat";
    docs/any-kb.md). "similarity" keeps the least of the entity: one number per pair.
    """

    def __init__(
        self, mention_size: int, entity_size: int, hidden: tuple[int, ...], dropout: float, form: str = "concat"
    ) -> None:
        super().__init__()
        if form not in PAIR_INPUTS:
            raise ValueError(f"unknown pair form {form!r}; use one of {PAIR_INPUTS}")
        if form != "concat" and mention_size != entity_size:
            raise ValueError(f"a {form} pair needs equal widths, got {mention_size} and {entity_size}")
        self.form = form
        self.mention_in = nn.Linear(mention_size, hidden[0])
        self.entity_in = nn.Linear(1 if form == "similarity" else entity_size, hidden[0], bias=False)
        self.first = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.rest, self.out_size = mlp(hidden[0], hidden[1:], dropout)
        self.out_size = hidden[-1]

    def forward(self, mentions: torch.Tensor, entities: torch.Tensor, entity_index: torch.Tensor) -> torch.Tensor:
        """mentions (B, dm), entities (U, de), entity_index (B, n) into U -> (B, n, out)."""
        mention_part = self.mention_in(mentions).unsqueeze(1)  # (B, 1, h)
        if self.form == "concat":
            entity_part = self.entity_in(entities)[entity_index]  # (B, n, h)
        elif self.form == "product":
            entity_part = self.entity_in(mentions.unsqueeze(1) * entities[entity_index])  # (B, n, h)
        else:
            cosine = nn.functional.cosine_similarity(mentions.unsqueeze(1), entities[entity_index], dim=-1)  # (B, n)
            entity_part = self.entity_in(cosine.unsqueeze(-1))  # (B, n, h)
        return self.rest(self.first(mention_part + entity_part))


class Ranker(nn.Module):
    def __init__(self, shape: RankerShape) -> None:
        super().__init__()
        self.shape = shape
        self.pair_mlps = nn.ModuleDict()
        width = 0
        for feature in shape.features:
            if feature == "triage":
                self.triage_mlp, out_size = mlp(TRIAGE_WIDTH, shape.triage_hidden, shape.dropout)
                width += out_size
                continue
            mention_size, entity_size, hidden = shape.sizes(feature)
            form = "concat" if feature == "type" else shape.pair_input  # types: two vocabularies, nothing to compare
            self.pair_mlps[f"{feature}_pair"] = PairMLP(mention_size, entity_size, hidden, shape.dropout, form)
            width += hidden[-1]
        self.final, final_size = mlp(width, shape.final_hidden, shape.dropout)
        self.score = nn.Linear(final_size, 1)
        if shape.nil_candidate:
            # The NIL option is a learned "NIL entity" (a name vector, a description vector, a
            # type row and triage evidence) scored through the same pair and final MLPs as the
            # real candidates, as ReFinED scores its NOTA candidate with the candidates' scorer:
            # its score then lies on the candidates' scale and reads the mention through the
            # projections linking has already learned, at the cost of a few thousand weights.
            # A separate MLP would have to learn that scale on 147 NIL mentions alone. Made
            # after every other layer, so those start from the same weights as without it.
            # Keyed "<feature>_vector": "type" is a Module method, which ParameterDict refuses as a key.
            self.nil_entity = nn.ParameterDict()
            for feature in shape.features:
                width_of = TRIAGE_WIDTH if feature == "triage" else shape.sizes(feature)[1]
                self.nil_entity[f"{feature}_vector"] = nn.Parameter(torch.zeros(width_of))

    @property
    def features(self) -> tuple[str, ...]:
        return self.shape.features

    @property
    def has_nil(self) -> bool:
        """Whether the ranker scores a NIL option (`nil_scores`)."""
        return self.shape.nil_candidate

    def forward(
        self,
        mentions: dict[str, torch.Tensor],
        entities: dict[str, torch.Tensor],
        entity_index: torch.Tensor,
        pair_triage: torch.Tensor | None = None,
        with_nil: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores (B, n) in [-1, 1] of B mentions against n entities each; with `with_nil`, also
        the mentions' NIL scores (B,) (`nil_scores`; the ranker must have the NIL option).

        mentions[f]: (B, width_f); entities[f]: (U, width_f), the distinct entities of the
        batch; entity_index: (B, n) rows into U; pair_triage: (B, n, TRIAGE_WIDTH) when
        the "triage" feature is on. Training under DDP goes through here (not `nil_scores`
        alone), so the NIL option's weights take part in the gradient exchange.
        """
        scores = self._pair_scores(mentions, entities, entity_index, pair_triage)
        if not with_nil:
            return scores
        return scores, self.nil_scores(mentions)

    def nil_scores(self, mentions: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) score in [-1, 1] of each mention's "none of the above" option (mentions as in `forward`).

        It reads only the mention's inputs (name, context, type) against the learned NIL
        entity; a mention is NIL by this option when the score beats its best candidate's.
        """
        if not self.shape.nil_candidate:
            raise ValueError("this ranker was trained without a NIL option (train.nil_candidate = false)")
        batch = next(iter(mentions.values())).shape[0]
        index = torch.zeros((batch, 1), dtype=torch.long, device=self.score.weight.device)
        entities = {
            feature: self.nil_entity[f"{feature}_vector"][None, :]  # (1, width): one "entity"
            for feature in self.shape.features
            if feature != "triage"
        }
        triage = (
            self.nil_entity["triage_vector"].expand(batch, 1, TRIAGE_WIDTH)  # (B, 1, TRIAGE_WIDTH)
            if "triage" in self.shape.features
            else None
        )
        return self._pair_scores(mentions, entities, index, triage)[:, 0]

    def _pair_scores(
        self,
        mentions: dict[str, torch.Tensor],
        entities: dict[str, torch.Tensor],
        entity_index: torch.Tensor,
        pair_triage: torch.Tensor | None,
    ) -> torch.Tensor:
        """(B, n) scores; arguments as in `forward`."""
        parts = []
        for feature in self.shape.features:
            if feature == "triage":
                parts.append(self.triage_mlp(pair_triage))
            else:
                parts.append(self.pair_mlps[f"{feature}_pair"](mentions[feature], entities[feature], entity_index))
        combined = torch.cat(parts, dim=-1)  # (B, n, width)
        return torch.tanh(self.score(self.final(combined))).squeeze(-1)


class NameMatching(nn.Module):
    """The ranker plus the §7.1 auxiliary task: matching a foreign name to its English name.

    A pair's score is tanh(match(name_pair MLP(foreign, English))): the ranker's own name
    pair MLP, shared, then a matching layer of its own. One module holds both, so one
    forward (and one DDP wrapper) serves both losses; only `ranker` is saved as the
    model, so the matching layer is dropped after training.
    """

    def __init__(self, ranker: Ranker) -> None:
        super().__init__()
        self.ranker = ranker
        self.match = nn.Linear(ranker.shape.name_hidden[-1], 1)

    def forward(
        self,
        mentions: dict[str, torch.Tensor],
        entities: dict[str, torch.Tensor],
        entity_index: torch.Tensor,
        pair_triage: torch.Tensor | None,
        foreign: torch.Tensor,
        english: torch.Tensor,
        english_index: torch.Tensor,
        with_nil: bool = False,
    ) -> tuple:
        """(ranker scores (B, n) — with `with_nil` the pair (scores, NIL scores (B,)) — and name-pair
        scores (P, m)); see `Ranker.forward` and `name_scores`."""
        return (
            self.ranker(mentions, entities, entity_index, pair_triage, with_nil=with_nil),
            self.name_scores(foreign, english, english_index),
        )

    def name_scores(self, foreign: torch.Tensor, english: torch.Tensor, english_index: torch.Tensor) -> torch.Tensor:
        """foreign (P, H) name vectors, english (U, H) distinct English names, english_index (P, m) into U -> (P, m)."""
        hidden = self.ranker.pair_mlps["name_pair"](foreign, english, english_index)  # (P, m, h)
        return torch.tanh(self.match(hidden)).squeeze(-1)


class NearestNeighbour(nn.Module):
    """The paper's nearest-neighbour baseline: cosine(mention-string vector, entity-name vector).

    No parameters and no training; scores lie in [-1, 1] like the ranker's, so NIL
    thresholds apply unchanged. Same call signature as `Ranker`.
    """

    features = ("name",)
    has_nil = False

    def forward(
        self,
        mentions: dict[str, torch.Tensor],
        entities: dict[str, torch.Tensor],
        entity_index: torch.Tensor,
        pair_triage: torch.Tensor | None = None,
    ) -> torch.Tensor:
        mention = nn.functional.normalize(mentions["name"], dim=-1)  # (B, H)
        entity = nn.functional.normalize(entities["name"], dim=-1)  # (U, H)
        return torch.einsum("bh,bnh->bn", mention, entity[entity_index]).clamp(-1.0, 1.0)  # (B, n)


def hinge_loss(
    gold_scores: torch.Tensor,
    negative_scores: torch.Tensor,
    negative_mask: torch.Tensor,
    margin: float,
    normaliser: float | None = None,
) -> torch.Tensor:
    """Mean of max(0, margin - (gold - hardest negative)).

    gold_scores (B,), negative_scores (B, n), negative_mask (B, n) True where a real
    negative stands; a mention without any negative contributes no loss. `normaliser`
    replaces the count of mentions with a negative as the divisor: a data-parallel rank
    holds only a slice of the batch, and dividing its sum by the whole batch's count
    (over the world size, which DDP's gradient averaging undoes) gives the whole batch's mean.
    """
    hardest = negative_scores.masked_fill(~negative_mask, float("-inf")).amax(dim=1)
    has_negative = negative_mask.any(dim=1)
    losses = torch.clamp(margin - (gold_scores - hardest), min=0.0)
    losses = torch.where(has_negative, losses, torch.zeros_like(losses))
    if normaliser is not None:
        return losses.sum() / normaliser
    return losses.sum() / has_negative.sum().clamp(min=1)
