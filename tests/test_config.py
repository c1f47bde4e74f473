"""Options: unknown names and bad values fail loudly; env vars and mode feed the same dataclass."""

from __future__ import annotations

import logging

import pytest
import torch

from regionc.config import Config, RegioncConfigError


def test_defaults_and_precedence():
    config = Config.build({"cache_dir": "/srv/cc"}, environ={"REGIONC_CACHE_DIR": "/env", "REGIONC_CACHE": "0"})
    assert str(config.cache_root) == "/srv/cc"  # options beat the environment
    assert config.cache is False                 # the environment beats defaults
    assert Config.build(environ={}).cudagraphs is None


def test_unknown_option_lists_valid_ones():
    with pytest.raises(RegioncConfigError, match=r"unknown option 'cache_size'.*valid options: .*cache_max_bytes"):
        Config.build({"cache_size": 1}, environ={})


@pytest.mark.parametrize("options, match", [
    ({"cudagraphs": "yes"}, "'cudagraphs' must be True, False or None"),
    ({"min_instances": 0}, "'min_instances' must be a positive int"),
    ({"capture_sizes": []}, "'capture_sizes' must be a non-empty list"),
    ({"capture_sizes": "16"}, "'capture_sizes' must be a non-empty list of positive integers, got '16'"),
    ({"passes": {"rmsnorm": False}}, "unknown pass 'rmsnorm'.*valid passes: rms_norm"),
    ({"kernel_choice": "fast"}, "'kernel_choice' must be one of auto, always"),
    ({"inductor_config": {"not_a_setting": 1}}, "unknown Inductor config 'not_a_setting'"),
    ({"inductor_config": {"triton.not_a_setting": 1}}, "unknown Inductor config 'triton.not_a_setting'"),
    ({"inductor_config": {"triton.enable_pdl": "no"}}, "'triton.enable_pdl' in option 'inductor_config' must be True or False, got 'no'"),
    ({"inductor_config": {"freezing": True}}, "cannot turn on 'freezing'"),
])
def test_bad_values_name_the_option(options, match):
    with pytest.raises(RegioncConfigError, match=match):
        Config.build(options, environ={})


@pytest.mark.parametrize("options, environ, match", [
    ({"cache_max_bytes": float("inf")}, {}, "'cache_max_bytes' must be a positive integer, got inf"),
    ({"min_instances": float("inf")}, {}, "'min_instances' must be a positive integer, got inf"),
    ({"min_instances": 1.5}, {}, "'min_instances' must be a positive integer, got 1.5"),
    ({"capture_sizes": [1, 2.5]}, {}, "'capture_sizes' must be a non-empty list of positive integers"),
    ({"lock_timeout_s": float("nan")}, {}, "'lock_timeout_s' must be a positive finite number, got nan"),
    ({}, {"REGIONC_LOCK_TIMEOUT_S": "nan"}, "'lock_timeout_s' must be a positive finite number, got 'nan'"),
    ({}, {"REGIONC_MIN_INSTANCES": "2.5"}, "'min_instances' must be a positive integer, got '2.5'"),
])
def test_numbers_are_checked_when_the_options_are_built(options, environ, match):
    """inf, nan and fractions used to pass here and fail at the first call, deep inside the compile."""
    with pytest.raises(RegioncConfigError, match=match):
        Config.build(options, environ=environ)
    config = Config.build({"min_instances": 3, "lock_timeout_s": 2}, environ={"REGIONC_CACHE_MAX_BYTES": "4096"})
    assert (config.min_instances, config.lock_timeout_s, config.cache_max_bytes) == (3, 2.0, 4096)
    assert type(config.lock_timeout_s) is float


def test_unknown_environment_variable_warns_once_naming_the_closest(caplog):
    environ = {"REGIONC_CACHEDIR": "/srv/cc", "REGIONC_NO_EXTENSION": "1", "OTHER": "x"}
    with caplog.at_level(logging.WARNING, logger="regionc"):
        assert Config.build(environ=environ).cache_dir == ""
        Config.build(environ=environ)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "REGIONC_CACHEDIR" in warning and "did you mean REGIONC_CACHE_DIR?" in warning


def test_environment_parsing():
    config = Config.build(environ={"REGIONC_CUDAGRAPHS": "auto", "REGIONC_CAPTURE_SIZES": "8,1,4",
                                   "REGIONC_PASSES": '{"rope": false}', "REGIONC_LOCK_TIMEOUT_S": "2.5"})
    assert config.cudagraphs is None and config.capture_sizes == (1, 4, 8)
    assert not config.pass_enabled("rope") and config.pass_enabled("attention")
    assert config.lock_timeout_s == 2.5
    with pytest.raises(RegioncConfigError, match="REGIONC_STRICT='maybe' is not a boolean"):
        Config.build(environ={"REGIONC_STRICT": "maybe"})


def test_mode_reduce_overhead_turns_graphs_on_and_bad_mode_fails():
    assert Config.build(mode="reduce-overhead", environ={}).cudagraphs is True
    with pytest.raises(RegioncConfigError, match="unsupported mode 'max-speed'; valid modes: .*'max-autotune'"):
        Config.build(mode="max-speed", environ={})


@pytest.mark.parametrize("mode, cudagraphs", [("max-autotune-no-cudagraphs", None), ("max-autotune", True)])
def test_max_autotune_modes_take_inductors_settings_of_that_mode(mode, cudagraphs):
    config = Config.build(mode=mode, environ={})
    assert config.cudagraphs is cudagraphs
    assert config.inductor_config == {k: v for k, v in torch._inductor.list_mode_options(mode).items()
                                      if k != "triton.cudagraphs"}
    assert config.inductor_config["max_autotune"] is True
    assert config.codegen_options() != Config.build(environ={}).codegen_options()  # the pieces' keys differ
    # an explicit inductor_config wins setting by setting, the mode's others stay
    mixed = Config.build({"inductor_config": {"max_autotune": False}}, mode=mode, environ={})
    assert mixed.inductor_config == {**config.inductor_config, "max_autotune": False}


def test_inductor_config_merges_over_the_environments_setting_by_setting():
    config = Config.build({"inductor_config": {"combo_kernels": True, "max_autotune": False}},
                          environ={"REGIONC_INDUCTOR_CONFIG": '{"max_autotune": true, "coordinate_descent_tuning": true}'})
    assert config.inductor_config == {"max_autotune": False, "coordinate_descent_tuning": True, "combo_kernels": True}


def test_max_autotune_reaches_the_pieces_inductor_compiles(monkeypatch):
    """Torch hands a custom backend the mode's name only: the pieces must compile with the mode's settings."""
    from regionc.compiler import graph

    patches, compile_piece = [], graph.compile_piece

    def recording(gm, inputs, config_patches, **kw):
        patches.append(config_patches)
        return compile_piece(gm, inputs, config_patches, **kw)

    monkeypatch.setattr(graph, "compile_piece", recording)
    monkeypatch.setenv("REGIONC_CACHE", "0")
    model, x = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()), torch.randn(2, 8)
    for mode, autotune in (("default", None), ("max-autotune-no-cudagraphs", True)):
        torch._dynamo.reset()
        patches.clear()
        torch.testing.assert_close(torch.compile(model, backend="regionc", mode=mode)(x), model(x))
        assert patches and all(p.get("max_autotune") is autotune for p in patches)


def test_codegen_options_exclude_runtime_only_settings():
    a = Config.build({"lock_timeout_s": 1.0, "cache_dir": "/a"}, environ={}).codegen_options()
    b = Config.build({"lock_timeout_s": 9.0, "cache_dir": "/b"}, environ={}).codegen_options()
    assert a == b
    assert a != Config.build({"passes": {"rope": False}}, environ={}).codegen_options()


def test_backend_is_found_through_the_entry_point_and_rejects_bad_options():
    assert "regionc" in torch.compiler.list_backends()
    from torch._dynamo.backends.registry import lookup_backend

    from regionc.backend import backend

    assert lookup_backend("regionc") is backend
    compiled = torch.compile(torch.nn.Linear(4, 4), backend="regionc", options={"bogus": 1})
    with pytest.raises(Exception, match="unknown option 'bogus'"):
        compiled(torch.randn(2, 4))
