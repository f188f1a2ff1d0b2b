import pyarrow.parquet as pq

from tests.core.conftest import cli, recipe_dict, write_recipe
from tests.helpers import make_corpus


def test_run_writes_a_dataset_card_matching_the_stats(tmp_path):
    make_corpus(tmp_path / "corpus")
    ws = tmp_path / "ws"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(tmp_path / "corpus", ws))
    proc = cli("run", str(recipe), "-q")
    out = proc.stdout + proc.stderr
    card = ws / "card" / "README.md"
    assert "dataset card:" in out and card.exists()
    text = card.read_text()
    for step in ("ingest", "normalize", "score", "filter", "exact_dedup"):
        assert f"| {step} | {step} |" in text
    # the card's numbers are the stored ones: ingest's quarantine reasons and the final document count
    quarantine = pq.read_table(next((ws / "ingest").glob("*/quarantine.parquet"))).column("reason").to_pylist()
    assert quarantine and "## Quarantine" in text
    for reason in {r.split(":")[0] for r in quarantine}:
        assert f"ingest: {reason} |" in text
    final = sum(pq.read_metadata(p).num_rows for p in (ws / "exact_dedup").glob("*/part-*.parquet"))
    assert f"{final} documents" in text
    assert (ws / "card" / "funnel.png").read_bytes()[:4] == b"\x89PNG"
    before = card.read_bytes()
    cli("card", "--workspace", str(ws))  # rewriting from the same run gives the same card
    assert card.read_bytes() == before
