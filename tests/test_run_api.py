"""The typed run API: one way to override a config, one parameter model for flow `atft`, one stage record.

The CLI and the flow both go through `PipelineParams` and `AtftConfig.with_overrides`, so a flag and a
deployment parameter cannot mean different things; `StageResult` is the one schema of `stage.json`.
"""

from __future__ import annotations

import inspect

import pytest

from atft_core.config import AtftConfig
from atft_core.errors import ConfigError
from atft_core.rundir import json_safe
from atft_core.stage_result import STAGE_FILE, StageResult
from flows.params import PipelineParams


def test_with_overrides_sets_each_value_in_its_section_and_none_keeps_the_file():
    base = AtftConfig()
    cfg = base.with_overrides(max_epochs=7, device="cpu", ensemble=2, min_rankic=0.02, require_gpu=True,
                              profile="gogooku3")
    assert (cfg.train.max_epochs, cfg.train.device, cfg.train.ensemble) == (7, "cpu", 2)
    assert (cfg.gate.min_rankic, cfg.gate.require_gpu) == (0.02, True)
    assert cfg.cache.columns.profile == "gogooku3"
    assert base.with_overrides() == base  # nothing given: the file's values
    assert cfg.with_overrides(max_epochs=None).train.max_epochs == 7
    assert base.train.max_epochs == AtftConfig().train.max_epochs  # the original is untouched


def test_the_flow_signature_and_the_parameter_model_list_the_same_parameters_and_defaults():
    from flows.pipeline import atft_pipeline

    signature = {n: p.default for n, p in inspect.signature(atft_pipeline.fn).parameters.items()}
    assert signature == {n: f.default for n, f in PipelineParams.model_fields.items()}


def test_parameters_build_the_configs_the_flow_runs_and_refuse_a_value_out_of_range():
    params = PipelineParams(max_epochs=3, hpo_max_epochs=5, device="cpu", min_gpu_util=0.5)
    assert params.config().train.max_epochs == 3 and params.config().gate.min_gpu_util == 0.5
    assert params.hpo_config().train.max_epochs == 5 and params.hpo_config().train.device == "cpu"
    assert PipelineParams(max_epochs=4).hpo_config().train.max_epochs == 4  # trials default to the gate's epochs
    assert params.flow_kwargs() == {"max_epochs": 3, "hpo_max_epochs": 5, "device": "cpu", "min_gpu_util": 0.5}
    with pytest.raises(ValueError, match="max_epochs"):
        PipelineParams(max_epochs=0)
    with pytest.raises(ValueError, match="unexpected|extra"):
        PipelineParams(max_epoch=2)  # a typo is an error, not a silently ignored parameter


def test_a_config_file_value_out_of_range_is_one_config_error(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {lr: -1}\n")
    with pytest.raises(ConfigError, match="train.lr"):
        PipelineParams(config_path=str(path)).config()


def test_stage_result_round_trips_through_the_run_folder(tmp_path):
    stage = StageResult(passed=True, gate={"passed": True, "criteria": []}, gate_markdown="## gate",
                        metrics={"val_rankic": 0.1}, history=[{"epoch": 1}], config=AtftConfig().to_dict())
    path = stage.write(tmp_path)
    assert path == tmp_path / STAGE_FILE and StageResult.exists(tmp_path)
    assert StageResult.read(tmp_path).to_dict() == json_safe(stage.to_dict())  # plain JSON: tuples as lists
    assert StageResult.read(tmp_path).metrics == {"val_rankic": 0.1}


def test_a_missing_stage_file_says_where_to_look(tmp_path):
    with pytest.raises(FileNotFoundError, match="gpu run's logs"):
        StageResult.read(tmp_path)
