"""Near-duplicate MinHash dedup: real datasketch permutations, real Parquet, real stage calls."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.dedup.minhash import permutations, signatures
from curation.dedup.near import CLUSTERS_FILE, NearDedupStage, cluster_texts, dedup_file
from curation.dedup.shingle import shingle_hashes
from slmforge.stages import parse_stage
from curation.dedup.config import NearDedupConfig
from schemas.errors import ConfigError
from schemas.stage import StageContext

VOCAB = [f"w{i}" for i in range(5000)]


def _doc(rng: random.Random, n: int = 200) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def _edit(rng: random.Random, text: str, rate: float) -> str:
    words = text.split()
    for k in rng.sample(range(len(words)), int(len(words) * rate)):
        words[k] = rng.choice(VOCAB)
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus():
    """40 unrelated docs + known near-duplicates (exact, re-formatted, 1% edits) + edge cases."""
    rng = random.Random(7)
    base = [_doc(rng) for _ in range(40)]
    texts = list(base)
    texts.append(base[0])                                   # 40: exact copy of 0
    texts.append(base[1].upper().replace(" ", " ,  "))      # 41: format change of 1 (same shingles)
    texts.append(_edit(rng, base[2], 0.01))                 # 42: ~1% edits of 2
    texts.append(base[2] + " extra")                        # 43: tiny append to 2 (longest of cluster 2)
    texts += ["", "   ", "word", "word", "!!!"]             # 44-48: empty, blank, one word twice, punctuation
    ids = list(range(1000, 1000 + len(texts)))
    return ids, texts


def test_known_pairs_found_unrelated_never_merged(corpus):
    ids, texts = corpus
    cl = cluster_texts(ids, texts)
    assert len(cl) == len(ids)
    assert cl[0] == cl[40]
    assert cl[1] == cl[41]
    assert cl[2] == cl[42] == cl[43] == ids[43]  # longest text is the representative
    unrelated = [cl[i] for i in range(3, 40)]
    assert unrelated == ids[3:40]  # singletons keep their own id
    assert len({cl[0], cl[1], cl[2]}) == 3
    # empty/blank/punctuation-only docs have no shingles: singletons, never merged with each other
    assert cl[44] == ids[44] and cl[45] == ids[45] and cl[48] == ids[48]
    # a one-word document is one shingle; two identical ones are duplicates
    assert cl[46] == cl[47]


def test_identical_across_worker_counts_and_runs(corpus):
    ids, texts = corpus
    cfg = NearDedupConfig(batch_size=16)  # several batches, so the pool really splits work
    one = cluster_texts(ids, texts, config=cfg, workers=1)
    assert cluster_texts(ids, texts, config=cfg, workers=1) == one
    assert cluster_texts(ids, texts, config=cfg, workers=2) == one
    assert cluster_texts(ids, texts, config=NearDedupConfig(batch_size=1000), workers=2) == one


def test_threshold_and_representative_choices(corpus):
    ids, texts = corpus
    rng = random.Random(3)
    a = _doc(rng)
    far = _edit(random.Random(4), a, 0.15)  # Jaccard of 5-gram sets far below 0.8
    cl = cluster_texts(["a", "b"], [a, far])
    assert cl == ["a", "b"]
    earliest = cluster_texts(ids, texts, config=NearDedupConfig(representative="earliest"))
    assert earliest[43] == ids[2]


def test_signatures_match_datasketch():
    """Our vectorised MinHash equals datasketch's MinHash fed the same 32-bit hash values."""
    from datasketch import MinHash

    cfg = NearDedupConfig(num_perm=64, seed=3)
    hashes, counts = shingle_hashes(["alpha beta gamma delta epsilon zeta eta theta"], ngram=5)
    assert counts.tolist() == [4]
    a, b = permutations(cfg)
    sig = signatures(hashes, counts, a, b)
    m = MinHash(num_perm=64, seed=3, hashfunc=lambda x: x)
    for hv in (hashes >> np.uint64(32)).astype(np.uint32).tolist():
        m.update(hv)
    assert sig[0].tolist() == m.hashvalues.astype(np.uint32).tolist()


def test_config_derives_bands_and_checks():
    cfg = NearDedupConfig()
    bands, rows = cfg.band_params()
    assert bands * rows <= 128 and bands > 1
    assert NearDedupConfig(bands=16, rows=8).band_params() == (16, 8)
    with pytest.raises(ConfigError):
        NearDedupConfig(bands=16)
    with pytest.raises(ConfigError):
        NearDedupConfig(representative="best_quality")
    assert isinstance(parse_stage({"stage": "near_dedup", "threshold": 0.85}, where="test"), NearDedupConfig)
    assert "workers" not in cfg.fingerprint_dict() and "threshold" in cfg.fingerprint_dict()


@pytest.mark.parametrize("id_type", [pa.int64(), pa.string()])
def test_dedup_file_preserves_id_type(tmp_path, corpus, id_type):
    ids, texts = corpus
    id_arr = pa.array(ids if id_type == pa.int64() else [f"doc-{i}" for i in ids], id_type)
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": id_arr, "text": texts}), src)
    out = tmp_path / "out.parquet"
    stats = dedup_file(src, out, config=NearDedupConfig(batch_size=16), workers=2)
    res = pq.read_table(out)
    assert res.column_names == ["id", "cluster_id"]
    assert res.schema.field("id").type == id_type and res.schema.field("cluster_id").type == id_type
    assert res["id"].to_pylist() == id_arr.to_pylist()
    cl = res["cluster_id"].to_pylist()
    assert cl[0] == cl[40] and cl[2] == cl[42] == cl[43]
    assert stats["docs"] == len(ids) and stats["duplicates"] == 5


def test_stage_prepare_and_process_record_decisions(tmp_path, corpus):
    ids, texts = corpus
    sids = [f"d{i}" for i in ids]
    shards = []
    for k, (lo, hi) in enumerate([(0, 25), (25, len(ids))]):
        p = tmp_path / f"part-{k:05d}.parquet"
        pq.write_table(pa.table({"id": sids[lo:hi], "text": texts[lo:hi]}), p)
        shards.append(p)
    stage = NearDedupStage(NearDedupConfig())
    ctx = StageContext(stage_dir=tmp_path / "stage", work_dir=tmp_path / "work", step="near_dedup", workers=1)
    stage.prepare(shards, ctx)
    assert (ctx.work_dir / CLUSTERS_FILE).exists()
    kept, decs = [], []
    for p in shards:
        res = stage.process(pq.read_table(p), ctx)
        kept += res.table["id"].to_pylist()
        assert res.table["cluster_id"].type == pa.string()
        decs.append(res.decisions)
    d = pa.concat_tables(decs).to_pylist()
    drops = {r["id"]: r for r in d if r["action"] == "drop"}
    keeps = {r["id"]: r for r in d if r["action"] == "keep"}
    # 41 (re-formatted copy of 1) is longer than 1, so it represents that cluster
    assert set(drops) == {"d1040", "d1001", "d1042", "d1002", "d1047"}
    assert all(r["reason"] == "near_duplicate" for r in drops.values())
    assert json.loads(drops["d1042"]["detail"]) == {"cluster_id": "d1043"}
    assert 0.8 <= drops["d1042"]["score"] < 1.0 and drops["d1040"]["score"] == 1.0
    assert set(keeps) == {"d1000", "d1041", "d1043", "d1046"}
    assert len(kept) == len(ids) - 5 and not set(kept) & set(drops)


def test_signatures_of_many_documents_match_datasketch_for_any_block_size():
    """Several documents (empty, short, longer than a block) against datasketch, for every grouping."""
    from datasketch import MinHash

    rng = random.Random(11)
    texts = ["", _doc(rng, 3), _doc(rng, 40), "!!", _doc(rng, 300), _doc(rng, 9)]
    cfg = NearDedupConfig(num_perm=32, seed=5)
    hashes, counts = shingle_hashes(texts, ngram=5)
    a, b = permutations(cfg)
    ref = signatures(hashes, counts, a, b)
    ends = np.cumsum(counts)
    for k, (e, c) in enumerate(zip(ends.tolist(), counts.tolist())):
        m = MinHash(num_perm=32, seed=5, hashfunc=lambda x: x)
        m.update_batch((hashes[e - c:e] >> np.uint64(32)).astype(np.uint32).tolist())
        assert ref[k].tolist() == m.hashvalues.astype(np.uint32).tolist()
    for chunk in (1, 5, 64, 1 << 20):  # documents split into groups differently: same minima
        assert np.array_equal(signatures(hashes, counts, a, b, chunk=chunk), ref)


def test_candidate_pairs_match_brute_force():
    """Bucket grouping (all pairs up to max_group members, a chain above) equals a plain loop."""
    from curation.dedup.minhash import candidate_pairs

    rng = np.random.default_rng(3)
    n = 400
    bands = rng.integers(0, 40, size=(n, 4)).astype(np.uint64)  # many buckets of 5-20 members
    has = rng.random(n) > 0.1
    for max_group in (64, 8):
        expect = set()
        for band in range(bands.shape[1]):
            buckets: dict[int, list[int]] = {}
            for d in np.nonzero(has)[0].tolist():
                buckets.setdefault(int(bands[d, band]), []).append(d)
            for members in buckets.values():
                members.sort()
                if len(members) <= max_group:
                    expect |= {(x, y) for k, x in enumerate(members) for y in members[k + 1:]}
                else:
                    expect |= set(zip(members, members[1:]))
        keys = candidate_pairs(bands, has, max_group=max_group)
        assert {(int(k) // n, int(k) % n) for k in keys} == expect


def test_recorded_jaccard_is_exact(tmp_path):
    """The score of a dropped duplicate is the exact Jaccard of the two shingle sets (read back
    from the spill), pairs below the threshold are never merged, and the spill is cleaned up."""
    import re

    def shingles(t: str) -> set[str]:
        w = re.findall(r"\w+", t.lower())
        return {" ".join(w[i:i + 5]) for i in range(len(w) - 4)}

    rng = random.Random(21)
    base = [_doc(rng, 300) for _ in range(6)]
    texts = base + [_edit(rng, base[k], rate) for k, rate in enumerate((0.0, 0.005, 0.01, 0.02, 0.04, 0.08))]
    texts.append(" ".join(base[0].split()[:240]))  # truncated copy: set sizes alone rule it out at 0.8
    ids = [f"d{i}" for i in range(len(texts))]
    spill = tmp_path / "spill"
    spill.mkdir()
    cfg = NearDedupConfig(representative="earliest", spill_dir=spill)
    from curation.dedup.near import cluster_batches

    tbl = pa.table({"id": ids, "text": texts})
    table, stats = cluster_batches(lambda: tbl.to_batches(max_chunksize=4), config=cfg, workers=2, spill_dir=spill)
    assert list(spill.iterdir()) == []
    cl, jac = table["cluster_id"].to_pylist(), table["jaccard"].to_pylist()
    for k in range(6, len(texts)):
        src = 0 if k == len(texts) - 1 else k - 6
        sa, sb = shingles(texts[src]), shingles(texts[k])
        true = len(sa & sb) / len(sa | sb)
        if cl[k] != ids[k]:  # merged: with its source, at an exact Jaccard >= threshold
            assert cl[k] == ids[src] and true >= 0.8 and jac[k] == pytest.approx(true, abs=1e-12)
        else:  # below the threshold, or an LSH miss (only near the threshold: P(miss | J >= 0.9) < 1e-3)
            assert true < 0.9
    assert cl[-1] == ids[-1]  # 236 of 296 shingles: Jaccard <= 0.797, rejected by the size bound alone
    assert stats["duplicates"] == sum(c != i for c, i in zip(cl, ids))


def test_word_split_equals_polars_regex():
    """The split-based tokenizer gives exactly the words (and word hashes) of polars'
    lowercase + ``\\w+`` regex, on adversarial Unicode: case folding that changes byte length,
    combining marks, non-ASCII spaces and punctuation, CJK, emoji, numerals, joiners, nulls."""
    import polars as pl

    from curation.dedup.shingle import _WORD_SEED, _word_hashes

    texts = ["ΣΑΣ σας", "Kelvin \u212a K", "e\u0301te\u0301 café", "a\u00a0b\u2003c", "x²y ½ ٣ Ⅻ", "日本語テキスト、です。",
             "emoji 😀 ok😀ok", "tab\tnew\nline\r\n", "", None, "   ", "İstanbul ǅ ß ẞ", "_under_score__",
             "a—b–c “q” ‘r’ …", "\u200dzwj\u200c", "x", " lead", "trail ", "Straße STRASSE"]
    for batch in (texts, texts[::-1], [None], ["   "], []):
        words = pl.Series("t", batch, dtype=pl.String).fill_null("").str.to_lowercase().str.extract_all(r"\w+")
        lens, wh = _word_hashes(batch)
        assert lens.tolist() == words.list.len().fill_null(0).to_list()
        assert wh.tolist() == words.explode().drop_nulls().hash(seed=_WORD_SEED).to_list()


def test_cli_dedup_runs_the_stage_and_writes_the_same_cluster_map(tmp_path):
    """`slmforge dedup` goes through run_step (decisions next to the output) and its id -> cluster_id
    map equals dedup_file's, id type kept."""
    import random

    from slmforge.cli_dedup import dedup_map

    rng = random.Random(1)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
    texts = []
    for _ in range(30):
        base = " ".join(rng.choice(words) for _ in range(60))
        texts += [base, base + " extra"] if rng.random() < 0.5 else [base]
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(100, 100 + len(texts))), "text": texts}), src)
    cfg = NearDedupConfig()
    dedup_file(src, tmp_path / "ref.parquet", config=cfg, workers=1)
    stats = dedup_map(src, tmp_path / "cli.parquet", config=cfg, workers=2)
    ref, got = pq.read_table(tmp_path / "ref.parquet"), pq.read_table(tmp_path / "cli.parquet")
    assert got.equals(ref) and got.schema.field("cluster_id").type == pa.int64()
    dec = pq.read_table(tmp_path / "cli.decisions.parquet").to_pylist()
    dropped = [d for d in dec if d["action"] == "drop"]
    assert len(dropped) == stats["dropped"]["near_duplicate"] == len(texts) - stats["kept"] > 0
