"""A few hundred seeded mutations of real bundles: each ends in a one-line `MoedgeError` or identical logits."""

from fuzz_bundles import OUTCOMES, export_samples, format_table, fuzz

MUTATIONS = 600


def test_mutated_bundles_fail_cleanly_or_change_nothing(tmp_path):
    bundles = export_samples(tmp_path)  # the default MoE, its group-32 variant, the dense sample
    result = fuzz(bundles, MUTATIONS, seed=20261129, workdir=tmp_path / "work")
    table = format_table(result["table"])
    assert not result["bugs"], f"{result['bugs'][:10]}\n{table}"
    totals = {o: sum(c[o] for c in result["table"].values()) for o in OUTCOMES}
    assert sum(totals.values()) == MUTATIONS
    assert totals["error"] > MUTATIONS // 2  # the mutations do break bundles: the fuzzer is not idle
