"""Host time of one regionc.compile decode step, split at its stages (HF Llama 32x2048, b8, StaticCache 4096, pos 512)."""
import json, os, statistics, sys, time
import torch, transformers
from transformers import StaticCache
sys.path.insert(0, os.getcwd())
import regionc
from regionc.tracing import saved
from regionc.compiler import program

cfg = transformers.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=8192)
torch.manual_seed(0)
model = transformers.LlamaModel(cfg).to("cuda", torch.bfloat16).eval()
torch.set_grad_enabled(False)
B = int(os.environ.get("B", "8"))
cache = StaticCache(config=cfg, max_cache_len=4096)
prompt = torch.randint(0, 32000, (B, 512), device="cuda")
model(input_ids=prompt, past_key_values=cache, use_cache=True)
regionc.compile(model, options={"cache_dir": "/tmp/rc-host"})
pos = torch.tensor([512], device="cuda")
tok = torch.ones(B, 1, dtype=torch.long, device="cuda")

def reset():
    pos.fill_(512)
    for layer in cache.layers:
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length.fill_(512)

def step():
    return model(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=pos)

for _ in range(5):
    reset(); step()
torch.cuda.synchronize()
marks = {}
def wrap(obj, name, label):
    orig = getattr(obj, name)
    def w(*a, **k):
        marks.setdefault(label + ">", time.perf_counter())
        r = orig(*a, **k)
        marks.setdefault(label + "<", time.perf_counter())
        return r
    setattr(obj, name, w)
wrap(saved._Entry, "check", "guards")
wrap(program.CompiledProgram, "__call__", "program")
wrap(torch.cuda.CUDAGraph, "replay", "replay")
from regionc.cudagraph import runner as R, staging as S, sizes as Z
wrap(R.PieceGraphRunner, "__call__", "runner")
wrap(R.PieceGraphRunner, "_replay", "_replay")
wrap(R.GraphPool, "_instance_of", "instance")
wrap(R, "keyed_shape", "keyed")
wrap(R, "copy_in", "copy_in")
import torch._dynamo.eval_frame as EF
n_args = []
orig_call = program.CompiledProgram.__call__
def counting(self, *a):
    if not n_args: n_args.append(len(a))
    return orig_call(self, *a)
program.CompiledProgram.__call__ = counting
rows = []
for i in range(60):
    reset()
    torch.cuda.synchronize()
    marks.clear()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter(); e0.record()
    step()
    e1.record(); t1 = time.perf_counter(); e1.synchronize()
    m = {k: (v - t0) * 1e6 for k, v in marks.items()}
    m["return"] = (t1 - t0) * 1e6
    m["step_ms"] = e0.elapsed_time(e1)
    rows.append(m)
keys = rows[-1].keys()
med = {k: statistics.median(r[k] for r in rows[10:] if k in r) for k in keys}
# guard check alone
e = [o for o in __import__("gc").get_objects() if isinstance(o, saved._Entry)]
kw = dict(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=pos)
chk = []
for ent in e:
    t = time.perf_counter()
    for _ in range(200): ent.check(model, (), kw)
    chk.append((time.perf_counter() - t) / 200 * 1e6)
print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": B,
                  "median_us_from_call": med, "guard_check_us_per_entry": chk,
                  "n_args": n_args[0] if n_args else None}, indent=1))
print("recursive dict tags:", torch._dynamo.config.use_recursive_dict_tags_for_guards)
