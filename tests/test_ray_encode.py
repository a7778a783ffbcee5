"""The Ray Data engine writes exactly what the local engine writes (a local 2-CPU Ray, a tiny model)."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("transformers")

from helpers import make_corpus  # noqa: E402

from nestrank.retrieve.embeddings import Embeddings  # noqa: E402
from nestrank.retrieve.encode import EncoderSpec, encode_corpus, encode_corpus_ray  # noqa: E402
from nestrank.retrieve.manifest import read_manifest  # noqa: E402


@pytest.mark.ray
def test_ray_engine_output_equals_local_engine(word_llama_dir, tmp_path):
    spec = EncoderSpec(str(word_llama_dir), "repllama", (("show_progress", False),))
    corpus = make_corpus(40)
    encode_corpus(corpus, spec(), tmp_path / "local", num_shards=3, model=spec.model, preset="repllama")
    # shard 1 done by the local engine first: the Ray run resumes and encodes only shards 0 and 2
    encode_corpus(corpus, spec(), tmp_path / "ray", shard_id=1, num_shards=3, model=spec.model, preset="repllama")
    before = (tmp_path / "ray" / "shard-00001.npy").stat().st_mtime_ns
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = encode_corpus_ray(corpus, spec, tmp_path / "ray", num_shards=3, model=spec.model,
                                     preset="repllama", actors=2)
    finally:
        ray.shutdown()
    local = read_manifest(tmp_path / "local")
    assert manifest["complete"] and manifest["normalized"] is True and manifest["dim"] == 32
    assert {k: v for k, v in manifest.items() if k != "shards"} == {k: v for k, v in local.items() if k != "shards"}
    assert manifest["shards"] == local["shards"]  # same counts and checksums: byte-identical shards
    assert Embeddings(tmp_path / "ray").load_all()[0] == corpus.ids
    assert (tmp_path / "ray" / "shard-00001.npy").stat().st_mtime_ns == before
