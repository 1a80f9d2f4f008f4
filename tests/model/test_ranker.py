"""The ranker (§3.2), its hinge loss (§3.3), negative sampling and the NIL decisions.

Small tensors and tables written by hand, so each expected value can be checked on paper.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from pipeline.core import schema
from pipeline.model.nil import best_thresholds, cluster_nils, decide, sweep
from pipeline.model.ranker import PairMLP, Ranker, RankerShape, hinge_loss
from pipeline.train.batches import sample_negatives

# --- hinge loss -------------------------------------------------------------------------------


def test_hinge_loss_uses_the_hardest_negative() -> None:
    gold = torch.tensor([0.5, 0.0])
    negatives = torch.tensor([[0.1, 0.3, -0.2], [-0.5, 0.4, 0.2]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    # Row 0: 1 - (0.5 - 0.3) = 0.8; row 1: 1 - (0.0 - 0.4) = 1.4; mean 1.1.
    assert hinge_loss(gold, negatives, mask, margin=1.0).item() == pytest.approx(1.1)


def test_hinge_loss_ignores_masked_negatives() -> None:
    gold = torch.tensor([0.5])
    negatives = torch.tensor([[0.9, 0.3, 0.95]])
    mask = torch.tensor([[False, True, False]])
    assert hinge_loss(gold, negatives, mask, margin=1.0).item() == pytest.approx(0.8)


def test_hinge_loss_is_zero_beyond_the_margin() -> None:
    gold = torch.tensor([1.0, 0.9])
    negatives = torch.tensor([[-0.5, -0.2], [-0.3, -0.1]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    assert hinge_loss(gold, negatives, mask, margin=1.0).item() == 0.0
    # With a wider margin both rows are inside it: 1.5 - (1.0 + 0.2) = 0.3 and 1.5 - (0.9 + 0.1) = 0.5.
    assert hinge_loss(gold, negatives, mask, margin=1.5).item() == pytest.approx(0.4)


def test_hinge_loss_skips_mentions_without_negatives_and_has_gradients() -> None:
    gold = torch.tensor([0.5, 0.2], requires_grad=True)
    negatives = torch.tensor([[0.3, 0.0], [0.9, 0.9]], requires_grad=True)
    mask = torch.tensor([[True, True], [False, False]])
    loss = hinge_loss(gold, negatives, mask, margin=1.0)
    assert loss.item() == pytest.approx(0.8)  # only row 0, averaged over 1 mention
    loss.backward()
    assert gold.grad.tolist() == pytest.approx([-1.0, 0.0])
    assert negatives.grad.tolist() == [[pytest.approx(1.0), 0.0], [0.0, 0.0]]
    assert math.isfinite(loss.item())


def test_hinge_loss_all_masked_is_zero_not_nan() -> None:
    loss = hinge_loss(torch.tensor([0.1]), torch.tensor([[0.5]]), torch.tensor([[False]]), margin=1.0)
    assert loss.item() == 0.0


# --- ranker -----------------------------------------------------------------------------------


def tiny_shape(features=("name", "context", "type"), dropout: float = 0.2) -> RankerShape:
    return RankerShape(
        features=features,
        vector_size=8,
        mention_types=3,
        entity_types=4,
        name_hidden=(6,),
        context_hidden=(5, 4),
        type_hidden=(3,),
        final_hidden=(7,),
        dropout=dropout,
    )


def random_batch(batch: int, n: int, distinct: int, generator: torch.Generator):
    mentions = {
        "name": torch.randn(batch, 8, generator=generator),
        "context": torch.randn(batch, 8, generator=generator),
        "type": torch.eye(3)[torch.randint(0, 3, (batch,), generator=generator)],
    }
    entities = {
        "name": torch.randn(distinct, 8, generator=generator),
        "context": torch.randn(distinct, 8, generator=generator),
        "type": torch.eye(4)[torch.randint(0, 4, (distinct,), generator=generator)],
    }
    index = torch.randint(0, distinct, (batch, n), generator=generator)
    return mentions, entities, index


@pytest.mark.parametrize("features", [("name",), ("name", "context"), ("name", "context", "type")])
def test_ranker_scores_have_shape_b_by_n_and_lie_in_minus_one_one(features) -> None:
    torch.manual_seed(0)
    model = Ranker(tiny_shape(features))
    generator = torch.Generator().manual_seed(1)
    mentions, entities, index = random_batch(batch=5, n=7, distinct=4, generator=generator)
    # Large inputs push tanh to its limits; scores must still stay inside [-1, 1].
    mentions = {k: v * 100 for k, v in mentions.items()}
    scores = model(mentions, entities, index)
    assert scores.shape == (5, 7)
    assert torch.all(scores >= -1) and torch.all(scores <= 1)
    model.eval()
    with torch.no_grad():
        again = model(mentions, entities, index)
        # The same entity row scores the same wherever it stands in a mention's list.
        same = model(mentions, entities, index[:, :1].expand(5, 7))
    assert torch.allclose(same, same[:, :1].expand(5, 7))
    assert torch.allclose(again, model(mentions, entities, index))


def test_ranker_uses_only_its_features() -> None:
    torch.manual_seed(0)
    model = Ranker(tiny_shape(("name",)))
    assert set(model.pair_mlps) == {"name_pair"}
    model.eval()
    generator = torch.Generator().manual_seed(2)
    mentions, entities, index = random_batch(batch=2, n=3, distinct=3, generator=generator)
    changed = {**mentions, "context": torch.randn(2, 8)}
    with torch.no_grad():
        assert torch.equal(model(mentions, entities, index), model(changed, entities, index))


def test_split_first_layer_equals_a_linear_on_the_concatenation() -> None:
    torch.manual_seed(0)
    pair = PairMLP(mention_size=8, entity_size=5, hidden=(6, 4), dropout=0.3).eval()
    plain = nn.Linear(8 + 5, 6)
    with torch.no_grad():
        plain.weight.copy_(torch.cat([pair.mention_in.weight, pair.entity_in.weight], dim=1))
        plain.bias.copy_(pair.mention_in.bias)
    mentions, entities = torch.randn(3, 8), torch.randn(4, 5)
    index = torch.tensor([[0, 1], [3, 3], [2, 0]])  # (B=3, n=2) rows into the 4 entities
    with torch.no_grad():
        split = pair(mentions, entities, index)
        pairs = torch.cat([mentions[:, None, :].expand(3, 2, 8), entities[index]], dim=-1)  # (3, 2, 13)
        reference = pair.rest(torch.relu(plain(pairs)))
    assert split.shape == (3, 2, 4)
    assert torch.allclose(split, reference, atol=1e-6)


def test_the_product_pair_reads_mention_times_entity_and_scores_no_entity_alone() -> None:
    pair = PairMLP(mention_size=4, entity_size=4, hidden=(3,), dropout=0.0, form="product").eval()
    mentions = torch.tensor([[1.0, 0.0, 2.0, 0.0]])
    entities = torch.tensor([[0.0, 5.0, 0.0, 7.0], [1.0, 1.0, 1.0, 1.0]])  # entity 0 shares no dimension
    with torch.no_grad():
        out = pair(mentions, entities, torch.tensor([[0, 1]]))
        alone = torch.relu(pair.mention_in(mentions))  # what the mention gives with no entity at all
        with_product = torch.relu(pair.mention_in(mentions) + pair.entity_in(torch.tensor([[1.0, 0.0, 2.0, 0.0]])))
    assert torch.allclose(out[0, 0], alone[0])  # mention * entity is 0: entity 0's own vector adds nothing
    assert torch.allclose(out[0, 1], with_product[0])
    with pytest.raises(ValueError, match="equal widths"):
        PairMLP(mention_size=4, entity_size=5, hidden=(3,), dropout=0.0, form="similarity")


def test_a_product_ranker_keeps_the_type_pair_as_concat() -> None:
    shape = RankerShape(("name", "context", "type"), 8, 3, 4, (6,), (6,), (2,), (4,), 0.0, pair_input="product")
    ranker = Ranker(shape)
    assert ranker.pair_mlps["name_pair"].form == ranker.pair_mlps["context_pair"].form == "product"
    assert ranker.pair_mlps["type_pair"].form == "concat"


def test_the_similarity_pair_reads_only_the_cosine_of_mention_and_entity() -> None:
    pair = PairMLP(mention_size=3, entity_size=3, hidden=(2,), dropout=0.0, form="similarity").eval()
    mentions = torch.tensor([[1.0, 0.0, 0.0]])
    entities = torch.tensor([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0], [-3.0, 0.0, 0.0]])  # cosines 1, 0, -1
    with torch.no_grad():
        out = pair(mentions, entities, torch.tensor([[0, 1, 2]]))
        base = pair.mention_in(mentions)[0]
        expected = [torch.relu(base + pair.entity_in.weight[:, 0] * c) for c in (1.0, 0.0, -1.0)]
    assert torch.allclose(out[0], torch.stack(expected))
    assert pair.entity_in.weight.shape == (2, 1)  # one number per pair: no entity vector reaches a weight


# --- negative sampling ------------------------------------------------------------------------


def test_sample_negatives_never_returns_the_gold_and_respects_masks() -> None:
    generator = torch.Generator().manual_seed(0)
    candidates = torch.tensor([[5, 3, -1, -1], [3, -1, -1, -1], [0, 1, 2, 4], [2, 2, 2, 2]])
    gold = torch.tensor([3, 3, 1, 2])
    for _ in range(50):
        negatives, mask = sample_negatives(candidates, gold, count=6, hard_share=0.5, n_entities=6, generator=generator)
        assert negatives.shape == mask.shape == (4, 6)
        assert negatives.min() >= 0 and negatives.max() < 6  # padding is clamped to a valid row
        assert not torch.any(mask & (negatives == gold[:, None]))
        hard, hard_mask = negatives[:, :3], mask[:, :3]
        # Row 0 has one real hard negative (5); the other hard slots are masked.
        assert hard_mask[0].sum() == 1 and 5 in hard[0][hard_mask[0]].tolist()
        # Row 1 has none (only the gold and padding); row 3 has only the gold.
        assert not hard_mask[1].any() and not hard_mask[3].any()
        # Row 2: three of its candidates other than the gold.
        assert hard_mask[2].all() and set(hard[2].tolist()) <= {0, 2, 4}
        assert len(set(hard[2].tolist())) == 3  # drawn without replacement


def test_sample_negatives_is_seeded() -> None:
    candidates = torch.tensor([[0, 1, 2, 3, 4]])
    gold = torch.tensor([0])
    first = sample_negatives(candidates, gold, 4, 0.5, 50, torch.Generator().manual_seed(7))
    second = sample_negatives(candidates, gold, 4, 0.5, 50, torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_sample_negatives_hard_share_zero_is_all_random() -> None:
    generator = torch.Generator().manual_seed(0)
    negatives, mask = sample_negatives(torch.tensor([[1, 2]]), torch.tensor([0]), 5, 0.0, 3, generator)
    assert negatives.shape == (1, 5)
    assert torch.equal(mask, negatives != 0)


# --- NIL decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("best_kb_id", "best_score", "lang", "expected"),
    [
        ("Q1", 0.3, "en", "Q1"),  # above en's threshold
        ("Q1", -0.5, "en", schema.NIL_ID),  # below it
        ("Q1", -0.2, "en", "Q1"),  # equal to it is not below
        (None, None, "en", schema.NIL_ID),  # no candidate at all
        ("Q2", -0.9, "es", "Q2"),  # es falls back to the default threshold -1
        ("Q2", -1.0, "es", "Q2"),
        (None, None, "es", schema.NIL_ID),
        ("Q3", 0.49, "ru", schema.NIL_ID),
    ],
)
def test_decide_gives_nil_below_threshold_or_without_candidate(best_kb_id, best_score, lang, expected) -> None:
    predictions = pl.DataFrame(
        {"mention_id": ["m"], "lang": [lang], "best_kb_id": [best_kb_id], "best_score": [best_score]},
        schema={"mention_id": pl.String, "lang": pl.String, "best_kb_id": pl.String, "best_score": pl.Float64},
    )
    decided = decide(predictions, {"en": -0.2, "ru": 0.5}, default=-1.0)
    row = decided.row(0, named=True)
    assert row["kb_id"] == expected
    assert row["is_nil"] == (expected == schema.NIL_ID)
    assert row["threshold"] == {"en": -0.2, "ru": 0.5}.get(lang, -1.0)


def tuning_table() -> pl.DataFrame:
    rows = [
        # en: m1 right at 0.6; m2 gold NIL scored 0.2; m3 wrong entity at 0.4; m4 gold NIL at -0.3.
        ("m1", "en", "Q1", 0.6, "Q1"),
        ("m2", "en", "Q2", 0.2, "NIL"),
        ("m3", "en", "Q4", 0.4, "Q3"),
        ("m4", "en", "Q5", -0.3, "NIL"),
        # es: a right link at 0.9 and a mention without candidates whose gold is NIL.
        ("m5", "es", "Q1", 0.9, "Q1"),
        ("m6", "es", None, None, "NIL"),
        # ru: a NIL mention scored 0.9: only a threshold above 0.9 gets it right.
        ("m7", "ru", "Q1", 0.9, "NIL"),
        ("m8", "ru", "Q2", 0.1, None),  # no gold: ignored by the sweep
    ]
    return pl.DataFrame(
        rows,
        schema={
            "mention_id": pl.String,
            "lang": pl.String,
            "best_kb_id": pl.String,
            "best_score": pl.Float64,
            "gold_kb_id": pl.String,
        },
        orient="row",
    )


def test_sweep_and_best_thresholds_on_a_hand_made_case() -> None:
    table = sweep(tuning_table())
    assert set(table["lang"]) == {"en", "es", "ru"}

    def micro(lang: str, threshold: float) -> float:
        part = table.filter((pl.col("lang") == lang) & ((pl.col("threshold") - threshold).abs() < 1e-9))
        assert part.height == 1, (lang, threshold)
        return part["micro_average"][0]

    # en, NIL when score < t: t <= -0.3 -> only m1 right; t in (0.2, 0.6] -> m1, m2, m4 right.
    assert micro("en", -1.0) == pytest.approx(1 / 4)
    assert micro("en", 0.0) == pytest.approx(2 / 4)
    assert micro("en", 0.2) == pytest.approx(2 / 4)  # 0.2 is not below 0.2: m2 still linked
    assert micro("en", 0.21) == pytest.approx(3 / 4)
    assert micro("en", 0.6) == pytest.approx(3 / 4)
    assert micro("en", 0.61) == pytest.approx(2 / 4)
    assert micro("es", -1.0) == 1.0 and micro("es", 1.0) == pytest.approx(1 / 2)
    assert micro("ru", 0.9) == 0.0 and micro("ru", 0.91) == 1.0

    # The middle of each language's flat optimum: en [0.21, 0.6], es [-1, 0.9], ru [0.91, 1].
    thresholds = best_thresholds(table)
    assert thresholds == {"en": pytest.approx(0.405), "es": pytest.approx(-0.05), "ru": pytest.approx(0.955)}

    decided = decide(tuning_table(), thresholds, default=-1.0)
    assert decided["kb_id"].to_list() == ["Q1", "NIL", "NIL", "NIL", "Q1", "NIL", "NIL", "NIL"]


def test_best_thresholds_takes_the_middle_of_the_widest_flat_optimum() -> None:
    # Two runs at the best micro-average 0.9: [-0.5, -0.4] and [0.1, 0.5]; the wider one wins.
    table = pl.DataFrame(
        {
            "lang": "en",
            "threshold": [-0.6, -0.5, -0.4, 0.0, 0.1, 0.3, 0.5, 0.7],
            "micro_average": [0.8, 0.9, 0.9, 0.7, 0.9, 0.9, 0.9, 0.6],
        }
    )
    assert best_thresholds(table) == {"en": pytest.approx(0.3)}
    # A single best point is its own middle.
    single = table.with_columns(
        pl.when(pl.col("threshold") == 0.7).then(1.0).otherwise(pl.col("micro_average")).alias("micro_average")
    )
    assert best_thresholds(single) == {"en": pytest.approx(0.7)}


def test_sweep_of_nothing_is_empty() -> None:
    empty = tuning_table().filter(pl.col("gold_kb_id").is_null())
    assert sweep(empty).is_empty()
    assert best_thresholds(sweep(empty)) == {}


# --- NIL clustering ---------------------------------------------------------------------------


def decided_table() -> pl.DataFrame:
    rows = [
        ("a", "doc1", "Serena Williams", True, "NIL"),
        ("b", "doc2", "SERENA  williams", True, "NIL"),  # same folded string, other document
        ("c", "doc2", "Sérèna Williams", True, "NIL"),  # accents fold away too
        ("d", "doc3", "Klara Dvorakova", True, "NIL"),
        ("e", "doc3", "Paris", False, "Q4"),
        ("f", "doc4", "Серена Уильямс", True, "NIL"),  # another script: its own cluster
    ]
    return pl.DataFrame(
        rows,
        schema={
            "mention_id": pl.String,
            "doc_id": pl.String,
            "mention": pl.String,
            "is_nil": pl.Boolean,
            "kb_id": pl.String,
        },
        orient="row",
    )


def test_cluster_nils_by_name_groups_same_normalised_strings_across_docs() -> None:
    clustered = cluster_nils(decided_table(), "name")
    ids = dict(zip(clustered["mention_id"], clustered["system_id"]))
    assert ids["a"] == ids["b"] == ids["c"]
    assert len({ids["a"], ids["d"], ids["f"]}) == 3
    assert ids["e"] == "Q4"
    assert all(ids[m].startswith(schema.NIL_ID) for m in "abcdf")
    assert "mention_fold" not in clustered.columns and "mention_roman" not in clustered.columns
    assert clustered.height == 6


def test_cluster_nils_singleton_gives_unique_ids() -> None:
    clustered = cluster_nils(decided_table(), "singleton")
    ids = dict(zip(clustered["mention_id"], clustered["system_id"]))
    nil_ids = [ids[m] for m in "abcdf"]
    assert len(set(nil_ids)) == 5 and all(i.startswith(schema.NIL_ID) for i in nil_ids)
    assert ids["e"] == "Q4"


def test_decide_then_cluster_keeps_linked_ids() -> None:
    predictions = pl.DataFrame(
        {
            "mention_id": ["x", "y", "z"],
            "lang": ["en"] * 3,
            "mention": ["Obama", "Bamako", "bamako"],
            "best_kb_id": ["Q1", "Q2", None],
            "best_score": [0.7, -0.9, None],
        }
    )
    clustered = cluster_nils(decide(predictions, {"en": -0.5}, -1.0), "name")
    assert clustered["system_id"][0] == "Q1"
    assert clustered["system_id"][1] == clustered["system_id"][2] != "Q2"
    assert np.all(clustered["is_nil"].to_numpy() == np.array([False, True, True]))


def test_weight_average_is_an_exponential_moving_average_of_the_weights() -> None:
    from pipeline.train.state import weight_average

    assert weight_average(Ranker(tiny_shape()), 0.0) is None
    model = Ranker(tiny_shape())
    average = weight_average(model, 0.5)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    average.update_parameters(model)  # the first update copies the model
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    average.update_parameters(model)  # 0.5 * first + 0.5 * (first + 1) = first + 0.5
    for name, value in average.module.state_dict().items():
        torch.testing.assert_close(value, first[name] + 0.5)
