"""Cache keys: every code-changing factor changes the key; host/process/path details never do."""

import os
import platform
import shutil
import socket
from pathlib import Path

import pytest
import torch

from regionc.cache import key as key_mod
from regionc.cache.key import canonical, environment_factors, inductor_config_hash, piece_key, sources_hash
from regionc.config import Config
from tests.models import ResidualMLP

META = [{"shape": [2, "s0", 64], "dtype": torch.float16, "stride": [4096, 64, 1], "dynamic_dims": [1]},
        {"shape": [64, 64], "dtype": torch.float16, "stride": [64, 1], "dynamic_dims": []}]


@pytest.fixture(scope="module")
def env():
    return environment_factors(torch.device("cpu"))


def _key(env, meta=META, options=None, fingerprint="fp0"):
    return piece_key(fingerprint, meta, options if options is not None else Config.build().codegen_options(), env)[0]


def test_environment_factors_content(env):
    assert env["torch_version"] == torch.__version__ and len(env["torch_key"]) >= 32
    assert env["device_type"] == "cpu" and env["triton_version"] and env["regionc_version"]
    assert len(env["regionc_sources"]) == 64 and len(env["inductor_config"]) == 64
    assert all(isinstance(v, str) for v in env.values())
    text = repr(env)
    for local in (socket.gethostname(), str(os.getpid()), str(Path.home()), str(Path.cwd()), "/tmp"):
        assert local not in text or local in ("", "/"), local


def test_the_cpu_factor_names_the_cpus_extensions_without_compiling_probes(monkeypatch):
    """Inductor's ``pick_vec_isa`` builds a C++ probe per extension (seconds before a first key on a
    small host); the key reads the CPU's extensions instead."""
    import torch._inductor.cpu_vec_isa as vec_isa

    def probe(*args, **kwargs):
        raise AssertionError("compiled a vector-extension probe")

    monkeypatch.setattr(vec_isa, "pick_vec_isa", probe)
    monkeypatch.setattr(vec_isa, "valid_vec_isa_list", probe)
    isa = environment_factors(torch.device("cpu"))["cpu_isa"]
    assert isa.split(",")[0] == torch.backends.cpu.get_cpu_capability()
    assert ("avx2" in isa.split(",")) == torch.cpu._is_avx2_supported()


def test_key_is_sha256_of_readable_factors(env):
    key, factors = piece_key("fp0", META, Config.build().codegen_options(), env)
    assert len(key) == 64 and int(key, 16) >= 0
    assert factors["input_meta"][0]["dtype"] == "torch.float16"
    assert factors["env"] == env and factors["fingerprint"] == "fp0"
    assert piece_key("fp0", META, Config.build().codegen_options(), env)[0] == key  # deterministic


def _with(meta, index, **changes):
    meta = [dict(m) for m in meta]
    meta[index].update(changes)
    return meta


@pytest.mark.parametrize("change", [
    "fingerprint", "dtype", "shape", "dynamic_dim", "stride", "codegen_pass", "codegen_inductor",
    "torch_key", "pass_sources", "triton", "gpu_name"])
def test_key_changes_with_each_factor(env, change):
    base = _key(env)
    if change == "fingerprint":
        other = _key(env, fingerprint="fp1")
    elif change == "dtype":
        other = _key(env, meta=_with(META, 0, dtype=torch.bfloat16))
    elif change == "shape":
        other = _key(env, meta=_with(META, 1, shape=[64, 128]))
    elif change == "dynamic_dim":
        other = _key(env, meta=_with(META, 0, shape=[2, 7, 64], dynamic_dims=[]))
    elif change == "stride":
        other = _key(env, meta=_with(META, 1, stride=[1, 64]))
    elif change == "codegen_pass":
        other = _key(env, options=Config.build({"passes": {"rope": False}}).codegen_options())
    elif change == "codegen_inductor":
        other = _key(env, options=Config.build({"inductor_config": {"max_autotune": True}}).codegen_options())
    elif change == "torch_key":
        other = _key({**env, "torch_key": "0" * 64})
    elif change == "pass_sources":
        other = _key({**env, "regionc_sources": "1" * 64})
    elif change == "triton":
        other = _key({**env, "triton_version": "9.9.9"})
    else:
        other = _key({**env, "gpu_name": "NVIDIA H100", "gpu_capability": "9.0"})
    assert other != base


def test_key_ignores_unrelated_options(env):
    base = _key(env)
    for options in ({"min_instances": 3}, {"cache_dir": "/somewhere/else"}, {"lock_timeout_s": 5},
                    {"cudagraph_check_addresses": True}, {"strict": True}, {"cache_max_bytes": 1000},
                    {"passes": {"rope": True}}):  # explicitly on == default
        assert _key(env, options=Config.build(options).codegen_options()) == base, options


def test_key_identical_across_hosts_processes_and_paths(env, monkeypatch, tmp_path):
    base = _key(env)
    monkeypatch.setattr(socket, "gethostname", lambda: "some-other-host")
    monkeypatch.setattr(platform, "node", lambda: "some-other-host")
    monkeypatch.setattr(os, "getpid", lambda: 424242)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setenv("REGIONC_CACHE_DIR", str(tmp_path / "regionc"))
    monkeypatch.chdir(tmp_path)
    with torch._inductor.config.patch(compile_threads=1, worker_start_method="fork"):
        other_env = environment_factors(torch.device("cpu"))
    assert other_env == env
    assert _key(other_env) == base


def test_inductor_config_hash_tracks_codegen_options_only():
    base = inductor_config_hash()
    with torch._inductor.config.patch(max_autotune=not torch._inductor.config.max_autotune):
        assert inductor_config_hash() != base
    with torch._inductor.config.patch(compile_threads=3):
        assert inductor_config_hash() == base
    with torch._inductor.config.patch(global_cache_dir="/x/y"):
        assert inductor_config_hash() == base


def test_sources_hash_is_content_based_and_path_independent(tmp_path):
    package = Path(key_mod.__file__).resolve().parent.parent
    a, b = tmp_path / "a" / "regionc", tmp_path / "elsewhere" / "deeper" / "regionc"
    for dst in (a, b):
        for sub in key_mod.SOURCE_DIRS:
            if (package / sub).is_dir():
                shutil.copytree(package / sub, dst / sub, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                (dst / sub).mkdir(parents=True)
    assert sources_hash(a) == sources_hash(b) == sources_hash(package)
    (a / "compiler" / "new_step.py").write_text("X = 1\n")  # a new source file
    assert sources_hash(a) != sources_hash(b)
    (b / "compiler" / "new_step.py").write_text("X = 1\n")
    assert sources_hash(a) == sources_hash(b)
    (a / "compiler" / "new_step.py").write_text("X = 2\n")  # an edited one
    assert sources_hash(a) != sources_hash(b)
    (b / "compiler" / "new_step.py").unlink()
    (b / "compiler" / "__pycache__").mkdir(exist_ok=True)
    (b / "compiler" / "__pycache__" / "junk.py").write_text("ignored")
    assert sources_hash(b) == sources_hash(package)


def test_canonical_rejects_unstable_values():
    assert canonical({"b": (1, 2), "a": {torch.float32}}) == {"a": ["torch.float32"], "b": [1, 2]}
    with pytest.raises(TypeError):
        canonical({"x": object()})


class _Stack(torch.nn.Module):
    """Three residual MLPs, then ``+ torch.ones(dim)`` (a factory call that makes the default dtype) if asked."""

    def __init__(self, dim: int, plus_ones: bool = False):
        super().__init__()
        self.layers = torch.nn.ModuleList(ResidualMLP(dim) for _ in range(3))
        self.plus_ones = plus_ones

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x + torch.ones(x.shape[-1]) if self.plus_ones else x


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("entry", ["backend", "regionc.compile"])
@pytest.mark.parametrize("first", ["autocast", "plain"])
def test_code_compiled_under_autocast_is_never_loaded_without_it(entry, first, device, tmp_path):
    """AOTAutograd traces a piece under the caller's autocast, so the same graph compiles to bf16 matmuls
    under ``torch.autocast("cpu", bfloat16)`` and fp32 ones without: each state finds only its own code in
    the cache (the key used to ignore it, and the second state ran the first one's code: 4e-3 off eager)."""
    import copy

    import regionc

    torch.manual_seed(0)
    model, x = _Stack(16).eval().to(device), torch.randn(4, 16, device=device)
    for autocast in ([True, False] if first == "autocast" else [False, True]):
        torch._dynamo.reset()
        options = {"cache_dir": str(tmp_path)}
        compiled = copy.deepcopy(model)
        compiled = (torch.compile(compiled, backend="regionc", options=options) if entry == "backend"
                    else regionc.compile(compiled, options=options))
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            tolerance = {"rtol": 2e-2, "atol": 2e-2} if autocast else {}  # fp32's defaults catch a bf16 matmul
            torch.testing.assert_close(compiled(x), model(x), **tolerance)
        assert "compiled" in {p.source for p in regionc.last_report().pieces}, autocast


@pytest.mark.gpu
def test_cuda_matmul_settings_change_the_cuda_environment():
    matmul = torch.backends.cuda.matmul
    base = environment_factors(torch.device("cuda"))
    before = matmul.allow_bf16_reduced_precision_reduction
    try:
        matmul.allow_bf16_reduced_precision_reduction = not before
        changed = environment_factors(torch.device("cuda"))
    finally:
        matmul.allow_bf16_reduced_precision_reduction = before
    assert changed["cuda_matmul"] != base["cuda_matmul"] and "cpu_threads" not in base


@pytest.mark.parametrize("setting", ["default_dtype", "deterministic", "float32_matmul_precision", "cpu_threads"])
def test_process_wide_settings_that_change_compiled_code_change_the_environment(setting):
    base = environment_factors(torch.device("cpu"))
    restore = {"default_dtype": (torch.set_default_dtype, torch.get_default_dtype()),
               "deterministic": (torch.use_deterministic_algorithms, torch.are_deterministic_algorithms_enabled()),
               "float32_matmul_precision": (torch.set_float32_matmul_precision, torch.get_float32_matmul_precision()),
               "cpu_threads": (torch.set_num_threads, torch.get_num_threads())}[setting]
    change = {"default_dtype": torch.float64, "deterministic": True, "float32_matmul_precision": "medium",
              "cpu_threads": torch.get_num_threads() + 1}[setting]
    try:
        restore[0](change)
        changed = environment_factors(torch.device("cpu"))
    finally:
        restore[0](restore[1])
    assert changed[setting] != base[setting]
    assert environment_factors(torch.device("cpu")) == base


def test_code_compiled_under_another_default_dtype_is_never_loaded(tmp_path):
    """``torch.ones(n)`` in a forward makes the default dtype: the graph is the same under a float64 default,
    the code is not (it loaded the float32 code and returned float32 where eager returns float64)."""
    import regionc

    torch.manual_seed(0)
    model, x = _Stack(8, plus_ones=True).eval(), torch.randn(2, 8)
    for dtype in (torch.float32, torch.float64):
        torch._dynamo.reset()
        torch.set_default_dtype(dtype)
        try:
            with torch.no_grad():
                out = torch.compile(model, backend="regionc", options={"cache_dir": str(tmp_path)})(x)
                expected = model(x)
        finally:
            torch.set_default_dtype(torch.float32)
        assert out.dtype == expected.dtype == dtype
        torch.testing.assert_close(out, expected, rtol=1.3e-6, atol=1e-5)  # the layers compute in fp32 either way
        assert "cache" not in {p.source for p in regionc.last_report().pieces}, dtype
