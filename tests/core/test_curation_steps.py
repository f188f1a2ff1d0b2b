from pathlib import Path

import pyarrow as pa

from curation.dedup.exact import ExactDedupStage, cluster_batches
from curation.normalize import NormalizeStage, normalize_text
from curation.quality import FilterStage, ScoreStage, compute_scores, keep_mask, score_text
from curation.config import FilterConfig, NormalizeConfig, ScoreConfig
from curation.dedup.config import ExactDedupConfig
from schemas.stage import StageContext

GOOD = (
    "The driver app shows the shipment list for the day. Each stop has an address, a time window and the "
    "goods to deliver. When a delivery is done, the driver scans the barcode and the app sends the event to "
    "the tracking service, which updates the customer portal within a minute. If the phone has no signal, "
    "the app keeps the events and sends them later in the same order.\n\n"
    "Dispatchers see the same stops on a map with live positions. They can move a stop to another driver, "
    "and the change reaches both phones at once. At the end of the shift, the app uploads the signed "
    "delivery notes and the photos, and the billing job picks them up overnight to prepare the invoices."
)


def ctx(tmp_path: Path) -> StageContext:
    return StageContext(stage_dir=tmp_path, work_dir=tmp_path, step="t")


def test_normalize_text():
    raw = "Ｆｕｌｌ\u200bwidth\r\n\r\n\r\n\r\nline  with\t tabs   \n\ufeffend"
    assert normalize_text(raw) == "Fullwidth\n\nline with tabs\nend"
    assert normalize_text(raw, unicode_form="none", strip_control=False).startswith("Ｆｕｌｌ")


def test_normalize_stage_records_modifications(tmp_path):
    t = pa.table({"id": ["a", "b"], "text": pa.array(["clean text", "dirty  text\u200b"], pa.large_string())})
    res = NormalizeStage(NormalizeConfig()).process(t, ctx(tmp_path))
    assert res.table.column("text").to_pylist() == ["clean text", "dirty text"]
    assert res.decisions.column("action").to_pylist() == ["keep", "modify"]


def test_scores_separate_good_text_from_junk():
    good = score_text(GOOD)
    junk = score_text("click here " * 40)
    short = score_text("TODO")
    cfg = FilterConfig()
    keep, reasons = keep_mask(compute_scores([GOOD, "click here " * 40, "TODO"]), cfg)
    assert keep == [True, False, False]
    assert reasons[1] in ("max_top_2gram_frac", "max_dup_5gram_frac", "min_stopwords", "max_dup_line_frac")
    assert reasons[2] == "min_words"
    assert good["q_stopwords"] >= 2 and junk["q_top_2gram_frac"] > 0.5 and short["q_n_words"] == 1


def test_rethresholding_uses_score_columns_without_recomputing(tmp_path):
    t = pa.table({"id": ["a", "b"], "text": pa.array([GOOD, "word " * 30], pa.large_string())})
    scored = ScoreStage(ScoreConfig()).process(t, ctx(tmp_path)).table
    # drop the text: the filter only reads score columns
    scored_no_text = scored.drop_columns(["text"])
    res = FilterStage(FilterConfig(min_words=60)).process(scored_no_text, ctx(tmp_path))
    assert res.table.column("id").to_pylist() == ["a"]
    dec = res.decisions.to_pylist()
    assert dec[1]["action"] == "drop" and dec[1]["reason"] == "min_words" and dec[1]["score"] == 30.0
    assert res.counters["dropped:min_words"] == 1
    loose = FilterStage(FilterConfig(min_words=None, max_top_2gram_frac=None, max_dup_5gram_frac=None,
                                     max_dup_10gram_frac=None, min_stopwords=None, max_top_3gram_frac=None,
                                     max_top_4gram_frac=None, min_line_punct_ratio=None))
    assert loose.process(scored_no_text, ctx(tmp_path)).table.num_rows == 2


def test_exact_dedup_groups_and_representatives(tmp_path):
    texts = ["Hello World", "hello   world", "Other", "HELLO WORLD!!", "hello world"]
    batch = pa.record_batch({"id": ["a", "b", "c", "d", "e"], "text": texts})
    first = cluster_batches([batch], config=ExactDedupConfig()).to_pydict()
    assert first["cluster_id"] == ["a", "a", "c", "d", "a"]
    punct = cluster_batches([batch], config=ExactDedupConfig(ignore_punctuation=True)).to_pydict()
    assert punct["cluster_id"] == ["a", "a", "c", "a", "a"]
    longest = cluster_batches([batch], config=ExactDedupConfig(keep="longest")).to_pydict()
    assert longest["cluster_id"] == ["b", "b", "c", "d", "b"] and longest["is_rep"] == [False, True, True, True, False]


def test_exact_dedup_stage_across_shards(tmp_path):
    import pyarrow.parquet as pq

    s1 = pa.table({"id": ["a", "b"], "text": pa.array(["same text", "unique one"], pa.large_string())})
    s2 = pa.table({"id": ["c", "d"], "text": pa.array(["Same  TEXT", "unique two"], pa.large_string())})
    pq.write_table(s1, tmp_path / "p0.parquet")
    pq.write_table(s2, tmp_path / "p1.parquet")
    stage = ExactDedupStage(ExactDedupConfig())
    c = ctx(tmp_path)
    stage.prepare([tmp_path / "p0.parquet", tmp_path / "p1.parquet"], c)
    r1, r2 = stage.process(s1, c), stage.process(s2, c)
    assert r1.table.column("id").to_pylist() == ["a", "b"] and r2.table.column("id").to_pylist() == ["d"]
    assert r1.decisions.to_pylist()[0]["reason"] == "representative"
    dropped = r2.decisions.to_pylist()[0]
    assert dropped["action"] == "drop" and '"cluster_id": "a"' in dropped["detail"]
