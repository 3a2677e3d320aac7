"""`acml study`: the data rule of a study (downstream molecules never pretrained on), every stage
on a small real-molecule config, resume without redoing a finished stage, and the results page."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from rdkit import Chem
from rdkit.Chem import Descriptors

from acml_ray.config import StudyConfig, load_config, packaged_config
from acml_ray.data.sources import load_source
from acml_ray.model.serialization import load_model
from acml_ray.pipelines.study import run_study, write_results_markdown, write_study_input


def _task_file(path: Path, smiles: list[str]) -> str:
    """A regression task whose label is a real property (Crippen logP) of each molecule."""
    frame = pd.DataFrame({"smiles": smiles, "logp": [Descriptors.MolLogP(Chem.MolFromSmiles(s)) for s in smiles]})
    frame.to_csv(path, index=False)
    return str(path)


def test_packaged_study_config_is_paper_scale():
    cfg = load_config(packaged_config("study"))
    moses = next(s for s in cfg.data.sources if s.name == "moses")
    assert moses.limit is not None and moses.limit * (1 - cfg.data.val_fraction) >= 100_000
    assert moses.limit * cfg.data.val_fraction >= 10_000
    assert {m.name for m in cfg.modalities} == {"image", "smiles"}
    assert {t.name for t in cfg.eval.downstream.tasks} == {
        "b3db_classification",
        "b3db_regression",
        "freesolv",
        "solubility",
    }
    assert cfg.study.exclude_downstream and len(cfg.eval.downstream.seeds) >= 3
    assert cfg.eval.isomers.stereo_source == cfg.eval.isomers.constitutional_source == "held_out"


def test_a_second_study_on_one_folder_is_refused_while_the_first_runs(tmp_path):
    """Two study processes on one folder would each start the stages the other has not recorded
    (and train under one Ray run name): the second is refused before it does anything."""
    import filelock

    out = tmp_path / "study-run"
    (out / "study").mkdir(parents=True)
    pd.DataFrame({"smiles": ["CCO", "c1ccccc1", "CC(=O)O"]}).to_csv(tmp_path / "library.csv", index=False)
    cfg = load_config(
        packaged_config("study"),
        {
            "data.sources": [{"name": "library", "path": str(tmp_path / "library.csv")}],
            "eval.downstream.tasks": [],
            "study.input_shards": 1,
            "output_dir": str(out),
        },
    )
    running = filelock.FileLock(out / "study" / ".lock")  # what the first study holds
    with running.acquire(timeout=0):
        with pytest.raises(RuntimeError, match="another acml study is running"):
            run_study(cfg, ["input"], say=lambda _: None)
        assert not (out / "study" / "input.json").exists()
    results = run_study(cfg, ["input"], say=lambda _: None)  # the folder is free again
    assert results["input"]["rows"] == 3 and (out / "study" / "input.json").is_file()


def test_study_input_carries_the_spectra_its_nmr_modalities_read(tmp_path):
    """A study of spectra (the packaged `nmr` config) needs each molecule's shift lists beside its
    SMILES in the molecule table; a source without them is refused by name, before any work."""
    cfg = load_config(
        packaged_config("nmr"),
        {"data.sources": [{"name": "nmr_spectra", "limit": 40, "seed": 0}], "output_dir": str(tmp_path)},
    )
    result = write_study_input(cfg, tmp_path / "study", say=lambda _: None)
    table = pq.read_table(result.path).to_pandas()
    assert result.rows == 40 and {"smiles", "nmr13c", "nmr1h"} <= set(table.columns)
    shipped = load_source("nmr_spectra").set_index("smiles")
    first = table.iloc[0]
    assert list(first["nmr13c"]) == list(shipped.loc[first["smiles"], "nmr13c"])  # the molecule's own peaks

    no_spectra = load_config(
        packaged_config("nmr"),
        {"data.sources": [{"name": "chembl_approved_drugs", "limit": 10}], "output_dir": str(tmp_path)},
    )
    with pytest.raises(ValueError, match=r"column\(s\) \['nmr13c', 'nmr1h'\], which none of its data sources has"):
        write_study_input(no_spectra, tmp_path / "other", say=lambda _: None)


def test_study_input_leaves_downstream_molecules_and_their_stereoisomers_out(tmp_path):
    source = pd.DataFrame(
        {
            "smiles": [
                "C[C@H](N)C(=O)O",  # L-alanine: the task holds D-alanine
                "CC(N)C(=O)O",  # alanine without stereo
                "C[C@H]([NH3+])C(=O)[O-]",  # zwitterion: the same skeleton
                "CC(=O)Oc1ccccc1C(=O)O",  # aspirin, in the task as written
                "c1ccccc1",
                "CCO",
                "CCN(CC)CC",
                "not a molecule",  # kept: acml embed quarantines it with its reason
            ]
        }
    )
    source.to_csv(tmp_path / "library.csv", index=False)
    task = _task_file(tmp_path / "task.csv", ["C[C@@H](N)C(=O)O", "CC(=O)Oc1ccccc1C(=O)O", "CCCCCC"])
    cfg = load_config(
        None,
        {
            "data.sources": [{"name": "library", "path": str(tmp_path / "library.csv")}],
            "eval.downstream.tasks": [{"name": "logp", "path": task}],
            "study.input_shards": 3,
            "output_dir": str(tmp_path / "run"),
        },
    )
    out = tmp_path / "run" / "study"
    result = write_study_input(cfg, out, say=lambda _: None)
    assert result.excluded == 4 and result.excluded_by_task == {"logp": 4}
    excluded = pd.read_parquet(result.excluded_path)
    assert sorted(excluded["smiles"]) == sorted(source["smiles"][:4]) and set(excluded["task"]) == {"logp"}
    shards = sorted(Path(result.path).glob("part-*.parquet"))
    assert len(shards) == 3
    kept = pd.concat([pd.read_parquet(s) for s in shards])
    assert sorted(kept["smiles"]) == sorted(source["smiles"][4:]) and result.rows == 4
    assert result.by_source == {"library": 4}

    # Same sources and tasks: the table on disk is reused; a new task list writes it again.
    before = shards[0].stat().st_mtime_ns
    assert write_study_input(cfg, out, say=lambda _: None).fingerprint == result.fingerprint
    assert shards[0].stat().st_mtime_ns == before
    off = cfg.model_copy(update={"study": cfg.study.model_copy(update={"exclude_downstream": False})})
    again = write_study_input(off, out, say=lambda _: None)
    assert again.fingerprint != result.fingerprint and again.rows == 8 and again.excluded == 0


TOP10 = ("retrieval", "ecfp->graph", "pool_all", "top10")


def test_study_targets_name_a_listed_ablation_and_one_bar():
    ablations = [{"name": "single-image", "overrides": {"modalities": [{"name": "image"}]}}]
    target = {"claim": "c", "metric": [*TOP10], "versus": "single-image", "within": 0.02}
    assert StudyConfig.model_validate({"ablations": ablations, "targets": [target]}).targets[0].within == 0.02
    with pytest.raises(ValidationError, match="not listed: \\['single-smiles'\\]"):
        StudyConfig.model_validate({"ablations": ablations, "targets": [{**target, "versus": "single-smiles"}]})
    with pytest.raises(ValidationError, match="not both"):
        StudyConfig.model_validate({"ablations": ablations, "targets": [{**target, "at_least": 0.9}]})
    with pytest.raises(ValidationError, match="versus compares retrieval figures"):
        StudyConfig.model_validate(
            {"ablations": ablations, "targets": [{**target, "metric": ["isomers", "stereo", "image->graph", "top1"]}]}
        )
    # The packaged configs' targets point at figures their evaluation writes.
    nmr = load_config(packaged_config("nmr"))
    assert [t.versus for t in nmr.study.targets if t.versus] == [a.name for a in nmr.study.ablations]
    assert {t.metric[1] for t in nmr.study.targets} == {f"{m.name}->graph" for m in nmr.modalities}


@pytest.mark.slow
def test_study_runs_every_stage_resumes_and_reports(tmp_path, chembl_drugs, ray_local):
    drugs = chembl_drugs["smiles"].tolist()
    task = _task_file(tmp_path / "logp.csv", drugs[:60])
    # Constitutional isomers, so that the held-out side holds formula groups (C4H10O, C7H8O, C8H10,
    # C6H6O2, C5H12O); the drugs bring the stereo centres.
    isomers = (
        "CCCCO CC(C)CO CCC(C)O CC(C)(C)O CCOCC CCCOC COC(C)C Cc1ccccc1O Cc1cccc(O)c1 Cc1ccc(O)cc1 COc1ccccc1 "
        "OCc1ccccc1 Cc1ccccc1C Cc1cccc(C)c1 Cc1ccc(C)cc1 CCc1ccccc1 Oc1ccccc1O Oc1cccc(O)c1 Oc1ccc(O)cc1 "
        "CCCCCO CCCC(C)O CCC(C)CO CC(C)CCO CCC(C)(C)O CCOCCC CCCCOC"
    ).split()
    pd.DataFrame({"smiles": isomers}).to_csv(tmp_path / "isomers.csv", index=False)
    out = tmp_path / "study-run"
    cfg = load_config(
        packaged_config("study"),
        {
            "data.sources": [
                {"name": "chembl_approved_drugs", "limit": 400, "seed": 1},
                {"name": "isomers", "path": str(tmp_path / "isomers.csv")},
            ],
            "data.val_fraction": 0.4,
            "modalities": [{"name": "ecfp", "options": {"n_bits": 256}}],
            "train.epochs": 2,
            "train.batch_size": 64,
            "eval.pool_size": 16,
            "eval.pool_repeats": 2,
            "eval.isomers.constitutional_groups": 10,
            "eval.isomers.stereo_molecules": 8,
            "eval.isomers.max_set_size": 4,
            "eval.downstream.tasks": [{"name": "logp", "path": task}],
            "eval.downstream.methods": ["linear_probe", "scratch", "ecfp_rf"],
            "eval.downstream.seeds": [0],
            "eval.downstream.epochs": 2,
            "study.input_shards": 2,
            "study.ablation_train_rows": 150,
            "study.ablation_epochs": 1,
            "study.ablations": [{"name": "hidden-32", "overrides": {"graph_encoder.hidden_dim": 32}}],
            "study.compare_models": {"same": str(out / "model")},
            "study.compare_sections": ["retrieval", "downstream"],
            "study.targets": [
                {"claim": "ecfp top-10 vs hidden-32", "metric": [*TOP10], "versus": "hidden-32", "within": 0.05},
                {"claim": "ecfp top-10 is reported", "metric": [*TOP10]},
                {"claim": "ecfp top-10 above 1", "metric": [*TOP10], "at_least": 1.01},
            ],
            "output_dir": str(out),
        },
    )
    with pytest.raises(ValueError, match="stage 'input' has not run"):
        run_study(cfg, ["embed"], say=lambda _: None)
    with pytest.raises(ValueError, match="stage 'embed' has not run"):
        run_study(cfg, ["train"], say=lambda _: None)

    run_study(cfg, ["input", "embed", "train"])
    trained = out / "study" / "stages" / "train.json"
    stamp = trained.stat().st_mtime_ns
    results = run_study(cfg)  # continues: input, embed and train are not redone
    assert trained.stat().st_mtime_ns == stamp

    # No training molecule is a downstream-task molecule; every one of the 60 was in the sample
    # or not, and those that were are in excluded.parquet, not in the tables.
    excluded = set(pd.read_parquet(out / "study" / "excluded.parquet")["smiles"])
    assert excluded and excluded <= set(drugs[:60])
    train = pq.read_table(results["embed"]["train"]).column("smiles").to_pylist()
    val = pq.read_table(results["embed"]["val"]).column("smiles").to_pylist()
    task_keys = {Chem.MolToInchiKey(Chem.MolFromSmiles(s))[:14] for s in drugs[:60]}
    assert not task_keys & {Chem.MolToInchiKey(Chem.MolFromSmiles(s))[:14] for s in train + val}
    assert results["input"]["rows"] + results["input"]["excluded"] == 400 + len(isomers)

    report = json.loads(Path(results["evaluate"]["report"]).read_text())
    assert set(report["retrieval"]) == {"ecfp->graph", "graph->ecfp"}
    assert report["held_out_molecules"] == len(val)
    for kind in ("constitutional", "stereo"):  # hard pools built from the held-out molecules
        iso = report["isomers"][kind]["ecfp->graph"]
        assert iso["n_sets"] >= 1 and 0 <= iso["mrr"] <= 1 and iso["random"]["top1"] == iso["chance"]
    assert set(report["downstream"]["logp"]["methods"]) == {"linear_probe", "scratch", "ecfp_rf"}

    # The same model on the same held-out set scores the same; the ablation trained on 150 rows.
    same = json.loads(Path(results["compare"]["same"]["report"]).read_text())
    assert same["retrieval"] == report["retrieval"]
    assert "isomers" not in same and set(same["downstream"]["logp"]["methods"]) == {"linear_probe"}
    ablation = results["ablations"]["hidden-32"]
    assert ablation["train_rows"] == 150 and ablation["epochs_run"] == 1
    _, ablation_cfg, _ = load_model(ablation["model_dir"])
    assert ablation_cfg.graph_encoder.hidden_dim == 32

    page = write_results_markdown(results, cfg).read_text()
    for heading in ("## Data", "## Targets", "## Downstream, every encoder", "## What matters (ablations)"):
        assert heading in page
    assert "| hidden-32 |" in page and "same linear_probe" in page
    # Each target is judged on the figures the stages recorded: a bar, an ablation's figure less
    # `within`, or nothing (reported only).
    ours, theirs = (
        report["retrieval"]["ecfp->graph"]["pool_all"]["top10"],
        ablation["retrieval"]["ecfp->graph"]["pool_all"]["top10"],
    )
    verdict = "met" if ours >= theirs - 0.05 else "missed"
    assert f"| ecfp top-10 vs hidden-32 | {ours:.3f} ({verdict}) | >= hidden-32 ({theirs:.3f}) - 0.05 |" in page
    assert f"| ecfp top-10 is reported | {ours:.3f} | - |" in page
    assert f"| ecfp top-10 above 1 | {ours:.3f} (missed) | >= 1.01 |" in page

    # A changed eval section re-evaluates; the training it reads is kept.
    evaluated = out / "study" / "stages" / "evaluate.json"
    before = json.loads(evaluated.read_text())["fingerprint"]
    retrieval_only = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"sections": ["retrieval"]})})
    again = run_study(retrieval_only, ["evaluate"], say=lambda _: None)
    assert json.loads(evaluated.read_text())["fingerprint"] != before
    assert trained.stat().st_mtime_ns == stamp and again["train"] == results["train"]
    assert "downstream" not in json.loads(Path(again["evaluate"]["report"]).read_text())


def test_another_model_is_scored_with_its_own_frozen_encoders(tmp_path):
    """`compare` hands a model the study's embedded held-out table only when that model's frozen
    encoders made it; an ECFP model of another radius gets the molecules and embeds them itself."""
    from acml_ray.config import ACMLConfig
    from acml_ray.modalities import build_modality
    from acml_ray.model import ACMLModel
    from acml_ray.model.serialization import save_model
    from acml_ray.pipelines.study import held_out_for

    embedded = tmp_path / "embedded"
    (embedded / "val").mkdir(parents=True)
    smiles = ["CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O", "c1ccncc1"]
    frame = pd.DataFrame({"smiles": smiles, "inchikey": [Chem.MolToInchiKey(Chem.MolFromSmiles(s)) for s in smiles]})
    frame.to_parquet(embedded / "val" / "part-0.parquet")
    radius2 = build_modality("ecfp", {"n_bits": 64})
    (embedded / "report.json").write_text(json.dumps({"fingerprints": {"ecfp": radius2.fingerprint}}))

    def model(options: dict) -> str:
        cfg = ACMLConfig.model_validate(
            {
                "graph_encoder": {"num_layers": 2, "hidden_dim": 8},
                "projection": {"dims": [6]},
                "modalities": [{"name": "ecfp", "options": options}],
            }
        )
        folder = tmp_path / f"model-{len(options)}"
        save_model(ACMLModel.from_config(cfg, {"ecfp": 64}), cfg, folder)
        return str(folder)

    val = str(embedded / "val")
    assert held_out_for(model({"n_bits": 64}), val, tmp_path / "same", None, say=print) == val
    messages: list[str] = []
    other = held_out_for(model({"n_bits": 64, "radius": 3}), val, tmp_path / "other", None, say=messages.append)
    assert other != val and pq.read_table(other).column("smiles").to_pylist() == smiles
    assert "ecfp encoder differs" in messages[0] and "3 molecules" in messages[0]
