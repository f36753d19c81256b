"""Bad recipes, data, cards and models, as a careful user would try them: each gives one clear error naming the
file, key, row or option at fault, exit 2, no traceback, before any model is loaded (`validate` sees all of these)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from pipeline.__main__ import main
from support import CARDS, CHAT_ROWS, RECIPES, make_card, sft_stage, synthetic_pairs, write_jsonl

TINY = RECIPES / "tiny.yaml"


def cli(capsys, *args) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


def recipe_file(tmp_path: Path, stages: dict | None = None, text: str | None = None, raw: bytes | None = None,
                **top) -> Path:
    path = tmp_path / "recipe.yaml"
    if raw is not None:
        path.write_bytes(raw)
        return path
    if text is not None:
        path.write_text(text)
        return path
    body = {"name": "t", "model": "builtin:tiny-llama", "output_dir": str(tmp_path / "out"), **top,
            "stages": stages if stages is not None else {}}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def chat_file(tmp_path: Path, rows=CHAT_ROWS) -> Path:
    return write_jsonl(tmp_path / "chat.jsonl", rows)


def sft(tmp_path: Path, **extra) -> dict:
    return {"sft": sft_stage(chat_file(tmp_path), **extra)}


# --- recipes: (name, how to make the recipe and the extra arguments, what the error must say) --------------------

BOMB = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)])

RECIPES_CASES = [
    ("unknown top key", lambda t: (recipe_file(t, sft(t), sed=3), []), "sed: unknown key 'sed' (did you mean 'seed'?)"),
    ("no model", lambda t: (recipe_file(t, text=f"name: t\nstages:\n  sft: {json.dumps(sft_stage(chat_file(t)))}\n"),
                            []), "model: missing (required)"),
    ("seed below 0", lambda t: (recipe_file(t, sft(t), seed=-1), []),
     "seed: Input should be greater than or equal to 0"),
    ("seed above 2^32", lambda t: (recipe_file(t, sft(t), seed=2**32), []), "seed: Input should be less than or equal"),
    ("seed not a number", lambda t: (recipe_file(t, sft(t), seed="abc"), []), "seed: Input should be a valid integer"),
    ("name with a space", lambda t: (recipe_file(t, sft(t), name="my run"), []), "name: String should match pattern"),
    ("duplicate stage", lambda t: (recipe_file(t, text="name: t\nmodel: builtin:tiny-llama\nstages:\n"
                                                      "  sft: {kind: sft}\n  sft: {kind: dpo}\n"), []),
     "duplicate key 'sft'"),
    ("duplicate model", lambda t: (recipe_file(t, text="name: t\nmodel: builtin:tiny-llama\nmodel: x\nstages: {}\n"),
                                   []), "line 3, column 1: duplicate key 'model'"),
    ("stage name with a newline", lambda t: (recipe_file(t, {"sft\n": sft_stage(chat_file(t))}), []),
     "stage names use letters, digits"),
    ("stage name with a slash", lambda t: (recipe_file(t, {"a/b": sft_stage(chat_file(t))}), []),
     "stage names use letters, digits"),
    ("reserved stage name", lambda t: (recipe_file(t, {"eval-x": sft_stage(chat_file(t))}), []),
     "names starting with eval- are kept"),
    ("unknown kind", lambda t: (recipe_file(t, {"s": {**sft_stage(chat_file(t)), "kind": "stf"}}), []),
     "unknown stage kind 'stf' (did you mean 'sft'?)"),
    ("no kind", lambda t: (recipe_file(t, {"s": {"data": "x"}}), []), "stages.s.kind: missing; one of"),
    ("max_steps 0", lambda t: (recipe_file(t, sft(t, train={"max_steps": 0})), []), "0 steps trains nothing"),
    ("max_steps true", lambda t: (recipe_file(t, sft(t, train={"max_steps": True})), []),
     "stages.sft.train.max_steps: expected a number, got true"),
    ("learning rate a word", lambda t: (recipe_file(t, sft(t, train={"learning_rate": "fast"})), []),
     "stages.sft.train.learning_rate: Input should be a valid number"),
    ("unknown scheduler", lambda t: (recipe_file(t, sft(t, train={"lr_scheduler": "cosin"})), []),
     "unknown scheduler 'cosin' (did you mean 'cosine'?)"),
    ("unknown optimizer", lambda t: (recipe_file(t, sft(t, train={"optim": "adam"})), []),
     "unknown optimizer 'adam' (did you mean 'adamw_torch'?)"),
    ("callback without a colon", lambda t: (recipe_file(t, sft(t, train={"callbacks": ["nocolon"]})), []),
     "'nocolon' is not of the form 'module:ClassName'"),
    ("callback module missing", lambda t: (recipe_file(t, sft(t, train={"callbacks": ["nowhere_xyz:C"]})), []),
     "no module named 'nowhere_xyz'"),
    ("callback not a callback", lambda t: (recipe_file(t, sft(t, train={"callbacks": ["json:JSONDecoder"]})), []),
     "'json:JSONDecoder' is not a transformers TrainerCallback class"),
    ("callback class missing", lambda t: (recipe_file(t, sft(t, train={"callbacks": ["json:Nope"]})), []),
     "module 'json' has no attribute 'Nope'"),
    ("lora rank 0", lambda t: (recipe_file(t, sft(t, lora={"r": 0})), []),
     "stages.sft.lora.r: Input should be greater"),
    ("lora.rank", lambda t: (recipe_file(t, sft(t, lora={"rank": 4})), []), "unknown key 'rank' (did you mean 'r'?)"),
    ("unknown upstream", lambda t: (recipe_file(t, {"a": {**sft_stage(chat_file(t)), "from": "sfft"}}), []),
     "stages.a.from: no stage named 'sfft'"),
    ("cycle", lambda t: (recipe_file(t, {"a": {**sft_stage(chat_file(t)), "from": "b"},
                                         "b": {**sft_stage(chat_file(t)), "from": "a"}}), []), "stages: cycle"),
    ("ppo without a reward stage", lambda t: (TINY, ["--set", "stages.ppo.from=[sft]"]),
     "stages.ppo.from: a ppo stage needs a reward_model stage upstream"),
    ("ppo batches that do not divide", lambda t: (TINY, ["--set", "stages.ppo.rollout_batch_size=20"]),
     "rollout_batch_size (20) must be a multiple of"),
    ("kl gains without a target", lambda t: (TINY, ["--set", "stages.ppo.kl.kp=2"]),
     "stages.ppo.kl: kp: no target is set (coef stays fixed)"),
    ("kl guard without a target", lambda t: (TINY, ["--set", "stages.ppo.kl.guard=1.2"]),
     "stages.ppo.kl: guard: it is a multiple of kl.target, and no target is set"),
    ("kl guard inside the target", lambda t: (TINY, ["--set", "stages.ppo.kl={target: 3, guard: 0.9}"]),
     "stages.ppo.kl.guard: Input should be greater than 1"),
    ("horizon with the pi controller",
     lambda t: (TINY, ["--set", "stages.ppo.kl={target: 3, controller: pi, horizon: 9}"]),
     "stages.ppo.kl: horizon: the pi controller does not use it"),
    ("panel judge that names a policy", lambda t: (TINY, ["--set", "evaluate.judges=[reward:sft]"]),
     "'reward:sft': 'sft' makes a policy, not a reward model"),
    ("ppo with callbacks", lambda t: (TINY, ["--set", "stages.ppo.train.callbacks=[support.callbacks:Probe]"]),
     "stages.ppo.train.callbacks: a ppo stage does not use this setting"),
    ("grpo with eval_steps", lambda t: (RECIPES / "online.yaml", ["--set", "stages.grpo.train.eval_steps=3"]),
     "stages.grpo.train.eval_steps: a grpo stage does not use this setting"),
    ("unknown judge", lambda t: (TINY, ["--set", "stages.preferences.judge=vadr"]), "unknown judge 'vadr'"),
    ("judge that is not a function",
     lambda t: (TINY, ["--set", "stages.preferences.judge=support.judges:NOT_A_FUNCTION"]),
     "'NOT_A_FUNCTION' is a int, not a function"),
    ("judge of the wrong shape", lambda t: (TINY, ["--set", "stages.preferences.judge=os:getcwd"]),
     "getcwd must take (prompts, completions)"),
    ("evaluating a reward stage", lambda t: (TINY, ["--set", "evaluate.stages=[reward]"]),
     "evaluate.stages[0]: 'reward' makes a reward_model, not a policy"),
    ("full fine-tuning on a 4-bit base", lambda t: (TINY, ["--set", "model.quantization=4bit"]),
     "stages.reward.lora: model.quantization is 4bit"),
    ("missing data file", lambda t: (recipe_file(t, {"sft": sft_stage(t / "nope.jsonl")}), []),
     "stages.sft.data.path: file not found"),
    ("output_dir is a file", lambda t: (recipe_file(t, sft(t), output_dir=str(chat_file(t))), []),
     "exists and is not a folder"),
    ("output_dir under a file", lambda t: (recipe_file(t, sft(t), output_dir=str(chat_file(t) / "out")), []),
     "cannot be created"),
    ("recipe not UTF-8", lambda t: (recipe_file(t, raw=b"name: caf\xe9\n"), []), "not UTF-8 text"),
    ("recipe is binary", lambda t: (recipe_file(t, raw=bytes(range(256))), []), "not UTF-8 text"),
    ("YAML syntax", lambda t: (recipe_file(t, text="name: x\nstages:\n  sft: {kind: sft\n"), []), "not valid YAML"),
    ("alias bomb", lambda t: (recipe_file(t, text=BOMB + "\n"), []), "values through its aliases"),
    ("--set without =", lambda t: (TINY, ["--set", "justakey"]), "argument --set: 'justakey' is not KEY.PATH=VALUE"),
    ("--set below a value", lambda t: (TINY, ["--set", "stages.sft.max_length.x=1"]),
     "'stages.sft.max_length' is not a mapping"),
    ("recipe is a list", lambda t: (recipe_file(t, text="- a\n- b\n"), []), "a recipe is a YAML mapping"),
    ("no stages", lambda t: (recipe_file(t, {}), []), "stages: must be a non-empty mapping"),
    ("unknown builtin model", lambda t: (recipe_file(t, sft(t), model="builtin:huge"), []),
     "unknown builtin model 'huge'"),
    ("evaluation prompts missing", lambda t: (TINY, ["--set", "evaluate.prompts=nowhere.yaml"]),
     "evaluate.prompts: file not found: nowhere.yaml"),
]


@pytest.mark.parametrize("name, make, expected", RECIPES_CASES, ids=[c[0] for c in RECIPES_CASES])
def test_bad_recipes(capsys, tmp_path, name, make, expected):
    path, extra = make(tmp_path)
    code, err = cli(capsys, "validate", path, *extra)
    assert code == 2, err
    assert expected in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists(), "nothing is written"


def test_there_are_at_least_30_recipe_cases():
    assert len({c[0] for c in RECIPES_CASES}) >= 30


# --- data files and cards -------------------------------------------------------------------------------------------


def with_rows(rows, name="d.jsonl"):
    return lambda t: {"sft": sft_stage(write_jsonl(t / name, rows))}


def with_text(text: bytes, name: str):
    def make(t):
        path = t / name
        path.write_bytes(text)
        return {"sft": sft_stage(path)}
    return make


def dpo_on(rows):
    return lambda t: {"sft": sft_stage(chat_file(t)), "dpo": {"kind": "dpo", "from": "sft",
                                                                "data": {"path": str(write_jsonl(t / "p.jsonl", rows)),
                                                                         "eval_fraction": 0.2}}}


def with_card(**fields):
    def make(t):
        return {"sft": {**sft_stage(chat_file(t)), "data": str(make_card(t, source={"path": str(chat_file(t))},
                                                                           **fields))}}
    return make


def card_text(text: str):
    def make(t):
        path = t / "card.yaml"
        path.write_text(text.replace("CHAT", str(chat_file(t))))
        return {"sft": {**sft_stage(chat_file(t)), "data": str(path)}}
    return make


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


DATA_CASES = [
    ("invalid JSON line", lambda t: with_text(json.dumps(CHAT_ROWS[0]).encode() + b"\n{not json\n", "d.jsonl")(t),
     "d.jsonl, row 2: not valid JSON"),
    ("a line that is not an object", with_text(b"[1, 2]\n", "d.jsonl"), "row 1: each line must be a JSON object"),
    ("not UTF-8", with_text(json.dumps(CHAT_ROWS[0]).encode() + b"\n\xff\xfe\n", "d.jsonl"), "not UTF-8 text"),
    ("binary", with_text(bytes(range(256)) * 4, "d.jsonl"), "not UTF-8 text"),
    ("parquet that is not parquet", with_text(b"just some text", "d.parquet"), "not a readable parquet file"),
    ("csv without the columns", with_text(b"question,answer\nq,a\n", "d.csv"),
     "rows need `messages`, or `prompt` and `completion`"),
    ("bad role", with_rows([{"messages": [{"role": "human", "content": "hi"}, bot("x")]}]),
     "row 1, field 'messages[0].role': must be one of"),
    ("no assistant turn", with_rows([{"messages": [user("hi")]}]), "has no assistant message"),
    ("starts with the assistant", with_rows([{"messages": [bot("hi"), user("x"), bot("y")]}]),
     "field 'messages[0].role': the conversation must start with a user turn"),
    ("system turn in the middle", with_rows([{"messages": [user("a"), {"role": "system", "content": "s"}, bot("b")]}]),
     "field 'messages[1].role': a system turn may only come first"),
    ("empty content", with_rows([{"messages": [user("  "), bot("x")]}]), "messages[0].content': must be a non-empty"),
    ("string margin", dpo_on([{**p, "margin": "big"} for p in synthetic_pairs(10)]),
     "field 'margin': must be a number, got 'big'"),
    ("chosen equals rejected", dpo_on([{**synthetic_pairs(1)[0], "rejected": synthetic_pairs(1)[0]["chosen"]}]),
     "is identical to chosen"),
    ("card row count", with_card(rows=5), "the card declares 5 rows, the source gives 4"),
    ("card checksum", with_card(sha256="0" * 64), "the rows hash to"),
    ("card alias bomb", card_text(BOMB + "\n"), "values through its aliases"),
    ("card duplicate key", card_text("name: a\nname: b\n"), "duplicate key 'name'"),
    ("card builder argument", card_text("name: c\ndescription: d\nlicense: MIT\nformat: prompt\nsource:\n  builder:\n"
                                        "    name: movie_prompts\n    args: {max_row: 3}\n"),
     "builder 'movie_prompts' has no argument 'max_row' (did you mean 'max_rows'?)"),
    ("card source missing", card_text("name: c\ndescription: d\nlicense: MIT\nformat: messages\nsource: nope.jsonl\n"),
     "source.path: file not found: nope.jsonl"),
    ("eval file repeating training prompts", lambda t: {"sft": {**sft_stage(chat_file(t)), "data": {
        "path": str(chat_file(t)), "eval_path": str(write_jsonl(t / "e.jsonl", CHAT_ROWS[:2]))}}},
     "rows 1, 2 ask a prompt the training data"),
    ("prompt card as SFT data",
     lambda t: {"sft": {**sft_stage(chat_file(t)), "data": str(CARDS / "tiny_prompts.yaml")}},
     "this stage trains on messages or prompt_completion data; the card holds prompt rows"),
    ("chat card as prompts", lambda t: {"sft": sft_stage(chat_file(t)), "prefs": {
        "kind": "preferences", "from": "sft", "prompts": str(CARDS / "tiny_chat.yaml")}},
     "a prompt card is needed (format: prompt); this one holds messages rows"),
    ("too few prompts to split", lambda t: {"sft": {**sft_stage(write_jsonl(t / "d.jsonl", [CHAT_ROWS[0]] * 3)),
                                                    "data": {"path": str(t / "d.jsonl"), "eval_fraction": 0.5}}},
     "too few distinct prompts"),
]


@pytest.mark.parametrize("name, make, expected", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data(capsys, tmp_path, name, make, expected):
    code, err = cli(capsys, "validate", recipe_file(tmp_path, make(tmp_path)))
    assert code == 2, err
    assert expected in err and "Traceback" not in err, err


def test_a_card_that_is_not_utf8(capsys, tmp_path):
    card = tmp_path / "card.yaml"
    card.write_bytes(b"name: caf\xe9\n")
    code, err = cli(capsys, "data", "validate", card)
    assert code == 2 and "not UTF-8 text" in err and str(card) in err


def test_there_are_at_least_15_data_cases():
    assert len(DATA_CASES) + 1 >= 15


# --- models -------------------------------------------------------------------------------------------------------


def model_folder(t: Path, weights: bytes | None = None, config: str | None = None) -> Path:
    folder = t / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config if config is not None else json.dumps(
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


def gguf_file(t: Path, content: bytes) -> Path:
    (t / "m.gguf").write_bytes(content)
    return t / "m.gguf"


def safetensors_bytes(tensor_bytes: int = 16, cut: int = 0) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [tensor_bytes // 4], "data_offsets": [0, tensor_bytes]}})
    data = struct.pack("<Q", len(header)) + header.encode() + b"\0" * tensor_bytes
    return data[: len(data) - cut]


MODEL_CASES = [
    ("folder without config.json", lambda t: (t / "empty").mkdir() or t / "empty", "is not a model folder"),
    ("config.json not JSON", lambda t: model_folder(t, config="{nope"), "config.json: not readable JSON"),
    ("truncated safetensors", lambda t: model_folder(t, safetensors_bytes(cut=5)), "truncated"),
    ("random bytes as safetensors", lambda t: model_folder(t, bytes(range(200))), "not a safetensors file"),
    ("corrupt safetensors header", lambda t: model_folder(t, struct.pack("<Q", 12) + b"{not json!!}" + b"\0" * 16),
     "the safetensors header is corrupt"),
    ("empty gguf", lambda t: gguf_file(t, b""), "not a GGUF file"),
    ("garbage gguf", lambda t: gguf_file(t, b"hello world" * 10), "not a GGUF file"),
    ("a reward model as the base", lambda t: model_folder(t, config=json.dumps(
        {"architectures": ["LlamaForSequenceClassification"]})), "holds a sequence classifier"),
]


@pytest.mark.parametrize("name, make, expected", MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_bad_models(capsys, tmp_path, name, make, expected):
    source = make(tmp_path)
    code, err = cli(capsys, "validate", recipe_file(tmp_path, sft(tmp_path), model=str(source)))
    assert code == 2 and expected in err and "Traceback" not in err, err
    code, err = cli(capsys, "eval", source, "--prompts", CARDS / "tiny_eval_prompts.yaml")
    assert code == 2 and expected in err and "Traceback" not in err, err


@pytest.mark.parametrize("args, expected", [
    (["--n", "0"], "argument --n: must be at least 1, got 0"),
    (["--n", "-5"], "argument --n: must be at least 1, got -5"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["--temperature", "0"], "argument --temperature: must be a positive number"),
    (["--seed", "-1"], "argument --seed: must be in 0..2^32-1"),
    (["--judge", "math:nope"], "module 'math' has no attribute 'nope'"),
])
def test_bad_eval_options(capsys, args, expected):
    code, err = cli(capsys, "eval", "builtin:tiny-llama", "--prompts", CARDS / "tiny_eval_prompts.yaml", *args)
    assert code == 2 and expected in err and "Traceback" not in err, err


def test_eval_with_a_chat_card_as_prompts(capsys):
    code, err = cli(capsys, "eval", "builtin:tiny-llama", "--prompts", CARDS / "tiny_chat.yaml")
    assert code == 2 and "a prompt card is needed" in err


def test_bad_launch_config(capsys, tmp_path):
    code, err = cli(capsys, "plan", TINY, "--launch", tmp_path / "missing.yaml")
    assert code != 0 and "missing.yaml" in err and "Traceback" not in err


@pytest.mark.parametrize("args, expected", [
    (["plan", TINY, "--set", "stages.sft.lora.r", "4"],
     "argument --set: 'stages.sft.lora.r' is not KEY.PATH=VALUE: join key and value with '=' and no space"),
    (["plan", TINY, "--sweep", "stages.dpo.beta"], "argument --sweep: 'stages.dpo.beta' is not KEY.PATH=VALUE"),
    (["plan"], "the following arguments are required: recipe"),
])
def test_usage_errors_are_one_line_that_points_at_help(capsys, args, expected):
    code, err = cli(capsys, *args)
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.strip().endswith("--help)"), err
