"""What a redone stage says changed (`manifest.changes`): values as a config file writes them."""

from pipeline.core.manifest import changes


def test_changed_settings_read_as_the_config_file_writes_them() -> None:
    previous = {"settings": {"enabled": True, "features": ["name", "context"], "form": "listwise", "lr": 5e-5}}
    previous["settings"]["encoder"] = ""
    now = {"enabled": False, "features": ["name"], "form": "pairwise", "new": 3, "encoder": "models/e5"}
    assert changes(previous, now, None, "rerank.") == [
        "rerank.enabled: true -> false",
        'rerank.encoder: "" -> models/e5',
        'rerank.features: ["name", "context"] -> ["name"]',
        "rerank.form: listwise -> pairwise",
        "rerank.lr: 5e-05 -> (default)",
        "rerank.new: (default) -> 3",
    ]


def test_changed_inputs_are_named() -> None:
    assert changes({"inputs": {"kb": "a", "docs": "b"}}, None, {"kb": "c", "docs": "b"}) == ["kb changed"]
