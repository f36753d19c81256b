"""Results that travel: every policy artifact loads with plain peft / transformers and computes what the pipeline's
own policy computes; a run's folder can move; `export` writes a folder that needs nothing of this project, with a
model card; a chat template given in the recipe goes everywhere."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.artifacts.artifact import Artifact
from pipeline.artifacts.policy import load_policy
from pipeline.graph.plan import make_plan
from pipeline.recipe import load_recipe
from support import CARDS, CHAT_ROWS, RECIPES, run_cli, run_recipe, sft_stage, write_jsonl

pytestmark = pytest.mark.slow  # whole chains, in fresh processes

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
SHORT = ["stages.sft.train.max_steps=6", "stages.reward.train.max_steps=6", "stages.dpo.train.max_steps=4",
         "stages.ppo.train.max_steps=2", "stages.ppo.rollout_batch_size=16", "evaluate.n=4"]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def plain(folder: Path):
    """The policy in ``folder`` the way a user outside this project loads it."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    if (folder / "adapter_config.json").exists():
        return AutoPeftModelForCausalLM.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """recipes/tiny.yaml, shortened, plus stages that cover the other shapes: a LoRA PPO, a DPO on a merged SFT, and
    the online stages (full and LoRA)."""
    out = tmp_path_factory.mktemp("tiny") / "out"
    recipe = yaml.safe_load((RECIPES / "tiny.yaml").read_text().replace("../data_cards/", f"{CARDS}/"))
    online = yaml.safe_load((RECIPES / "online.yaml").read_text().replace("../data_cards/", f"{CARDS}/"))
    stages = recipe["stages"]
    stages["ppo_lora"] = {**stages["ppo"], "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}
    stages["sft_merged"] = {**stages["sft"], "merge": True}
    stages["dpo_on_merged"] = {**stages["dpo"], "from": ["sft_merged", "preferences"]}
    stages["grpo"] = {**online["stages"]["grpo"], "train": {**online["stages"]["grpo"]["train"], "max_steps": 2}}
    stages["rloo_lora"] = {**online["stages"]["rloo"], "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
                           "train": {**online["stages"]["rloo"]["train"], "max_steps": 2}}
    recipe["output_dir"] = str(out)
    path = out.parent / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_recipe(path, SHORT + ["stages.dpo_on_merged.train.max_steps=4", "stages.ppo_lora.train.max_steps=2",
                              "stages.ppo_lora.rollout_batch_size=16"])
    return path


POLICIES = ["sft", "dpo", "ppo", "ppo_lora", "sft_merged", "dpo_on_merged", "grpo", "rloo_lora"]


@pytest.mark.parametrize("stage", POLICIES)
def test_every_policy_loads_with_plain_libraries_and_computes_the_same(tiny_run, stage):
    folder = Path(load_recipe(tiny_run).out_dir) / stage
    ours = logits(load_policy(folder))
    theirs = logits(plain(folder))
    assert (ours - theirs).abs().max().item() <= 1e-5, stage
    merged = folder / "merged"
    if merged.exists():
        from transformers import AutoModelForCausalLM

        assert (logits(AutoModelForCausalLM.from_pretrained(merged)) - ours).abs().max().item() <= 1e-5


def test_an_adapter_on_an_unmerged_adapter_names_a_plain_base(tiny_run):
    out = Path(load_recipe(tiny_run).out_dir)
    config = json.loads((out / "dpo" / "adapter_config.json").read_text())
    base = Path(config["base_model_name_or_path"])
    assert base.parent == out / ".bases" and (base / "config.json").is_file(), "the merged SFT, written once"
    ppo_lora = json.loads((out / "ppo_lora" / "adapter_config.json").read_text())
    assert ppo_lora["base_model_name_or_path"] == str(base), "shared by every stage that starts from the SFT"
    merged_base = json.loads((out / "dpo_on_merged" / "adapter_config.json").read_text())["base_model_name_or_path"]
    # The stored variant, not the link <out>/sft_merged, which a later run with other settings repoints.
    assert merged_base == str((out / "sft_merged").resolve() / "merged")
    assert ".store" in Path(merged_base).parts


def test_the_reward_model_loads_as_a_plain_sequence_classifier(tiny_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.models.reward_model import RewardModel

    folder = Path(load_recipe(tiny_run).out_dir) / "reward"
    ours = RewardModel.from_pretrained(folder)
    theirs = AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 2?"},
                                         {"role": "assistant", "content": "4"}], return_tensors="pt",
                                        return_dict=True)
    with torch.no_grad():
        plain_score = theirs(**ids).logits[0, 0].item()
    assert plain_score == pytest.approx(ours.score(["What is 2 plus 2?"], ["4"])[0], abs=1e-5)


def test_every_stage_folder_has_a_real_model_card(tiny_run):
    out = Path(load_recipe(tiny_run).out_dir)
    for stage in ("sft", "dpo", "reward", "ppo"):
        card = (out / stage / "README.md").read_text()
        assert card.startswith("---\n") and "More Information Needed" not in card, stage
        front = yaml.safe_load(card.split("---")[1])
        assert "alignment-pipeline" in front["tags"] and front["license"]
        assert "## Lineage" in card and "## Made with" in card and f"| **{stage}** |" in card
    assert "| sft | sft |" in (out / "dpo" / "README.md").read_text()
    assert "tiny_chat" in (out / "sft" / "README.md").read_text(), "the data card, with its licence"


# --- moving a run -----------------------------------------------------------------------------------------------


def test_a_moved_run_is_still_cached_reports_and_grows(tmp_path):
    original = tmp_path / "first"
    recipe_text = (RECIPES / "tiny.yaml").read_text().replace("../data_cards/", f"{CARDS}/")
    recipe_path = tmp_path / "tiny.yaml"
    recipe_path.write_text(recipe_text)
    run_recipe(recipe_path, [f"output_dir={original}", *SHORT])
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(original), str(moved))
    assert not original.exists()

    plan = make_plan(load_recipe(recipe_path, [f"output_dir={moved}", *SHORT]))
    assert {s.action for s in plan.stages} == {"cached"}, [(s.name, s.reason) for s in plan.stages]
    report = run_cli("report", str(recipe_path), "--output-dir", str(moved), *[a for s in SHORT for a in ("--set", s)])
    assert report.returncode == 0 and "dpo" in report.stdout and "ppo" in report.stdout, report.stderr
    for stage in ("sft", "dpo", "ppo"):
        load_policy(moved / stage)  # through the pipeline: references are relative

    grown = yaml.safe_load(recipe_text)
    grown["stages"]["more"] = {**copy.deepcopy(grown["stages"]["dpo"]), "from": ["dpo", "preferences"]}
    recipe_path.write_text(yaml.safe_dump(grown, sort_keys=False))
    plan = run_recipe(recipe_path, [f"output_dir={moved}", *SHORT, "stages.more.train.max_steps=2"])
    assert {s.name: s.action for s in plan.stages}["more"] == "run"
    assert all(s.action == "cached" for s in plan.stages if s.name not in ("more", "eval-more")), [
        (s.name, s.action, s.reason) for s in plan.stages]
    # the run repointed the adapters at their bases' new place: plain peft loads them again
    for stage in ("sft", "dpo", "more"):
        config = json.loads((moved / stage / "adapter_config.json").read_text())
        assert str(moved) in config["base_model_name_or_path"] or stage == "sft"
        assert (logits(plain(moved / stage)) - logits(load_policy(moved / stage))).abs().max().item() <= 1e-5
    assert Artifact.read(moved / "dpo").damage(full=True) is None, "the manifest follows the repointed file"


# --- export -----------------------------------------------------------------------------------------------------


def test_export_writes_a_self_contained_model_with_its_card(tiny_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(load_recipe(tiny_run).out_dir)
    result = run_cli("export", "dpo", "--recipe", str(tiny_run), "--to", str(tmp_path / "dpo"), "--dtype", "float32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("exported") == 1 and "a policy's full weights" in result.stdout
    assert "exported" not in result.stderr
    exported = tmp_path / "dpo"
    assert not (exported / "adapter_config.json").exists() and (exported / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert (logits(model) - logits(load_policy(out / "dpo"))).abs().max().item() <= 1e-5
    tokenizer = AutoTokenizer.from_pretrained(exported)
    assert tokenizer.chat_template and model.generation_config.eos_token_id == tokenizer.eos_token_id
    card = (exported / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and front["model-index"][0]["results"][0]["metrics"]
    assert "| base model |" in card and "| dpo |" in card, "the gold evaluation table"

    adapter = run_cli("export", str(out / "dpo"), "--to", str(tmp_path / "adapter"), "--adapter")
    assert adapter.returncode == 0, adapter.stderr[-2000:]
    assert (logits(plain(tmp_path / "adapter")) - logits(model)).abs().max().item() <= 1e-5

    reward = run_cli("export", str(out / "reward"), "--to", str(tmp_path / "reward"))
    assert reward.returncode == 0, reward.stderr[-2000:]
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward").config.num_labels == 1
    no_adapter = run_cli("export", str(out / "reward"), "--to", str(tmp_path / "reward-adapter"), "--adapter")
    assert no_adapter.returncode == 2 and "there is no adapter to export" in no_adapter.stderr
    assert not (tmp_path / "reward-adapter").exists()
    refused = run_cli("export", str(out / "preferences"), "--to", str(tmp_path / "prefs"))
    assert refused.returncode == 2 and "not a model to export" in refused.stderr


def test_push_to_hub_uploads_through_huggingface_hub(tiny_run, tmp_path, monkeypatch):
    import huggingface_hub

    from pipeline.artifacts.export import export, push_to_hub
    from pipeline.errors import UsageError

    folder = export(Artifact.read(Path(load_recipe(tiny_run).out_dir) / "sft"), tmp_path / "sft")
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(folder, "me/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(UsageError, match="no Hugging Face token"):
        push_to_hub(folder, "me/model")
    calls = []
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo, **kw: calls.append(("create", repo, kw)))

    class Info:
        commit_url = "https://huggingface.co/me/model/commit/1"

    def upload(**kwargs):  # the stand-in Hub: what would be uploaded
        calls.append(("upload", kwargs["repo_id"], sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())))
        return Info()

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload)
    assert push_to_hub(folder, "me/model", private=True) == Info.commit_url
    assert calls[0] == ("create", "me/model", {"private": True, "exist_ok": True})
    assert calls[1][1] == "me/model" and {"README.md", "model.safetensors", "config.json"} <= set(calls[1][2])

    def offline(**kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "upload_folder", offline)
    with pytest.raises(UsageError, match="failed \\(ConnectionError: Failed to resolve"):
        push_to_hub(folder, "me/model")


# --- chat templates ---------------------------------------------------------------------------------------------


TEMPLATE = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
            "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@pytest.fixture
def templateless_model(tmp_path, tiny_path) -> Path:
    folder = tmp_path / "bare"
    shutil.copytree(tiny_path, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_a_base_model_without_a_template_gets_the_recipes(make_recipe, tmp_path, templateless_model):
    data = write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS)
    without = make_recipe({"sft": sft_stage(data)}, model=str(templateless_model))
    refused = run_cli("validate", str(without))
    assert refused.returncode == 2 and "messages rows need a chat template" in refused.stderr
    assert "model.chat_template" in refused.stderr

    path = make_recipe({"sft": sft_stage(data)}, model={"source": str(templateless_model), "chat_template": TEMPLATE})
    run_recipe(path)
    folder = tmp_path / "out" / "sft"
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder).chat_template == TEMPLATE, "the artifact carries it"
    manifest = Artifact.read(folder).manifest
    assert manifest["chat_template"]["text"] == TEMPLATE and manifest["chat_template"]["from"].startswith("recipe")
    changed = make_plan(load_recipe(path, ["model.chat_template=" + json.dumps(TEMPLATE.replace("\\n", " "))]))
    assert changed["sft"].action == "run" and "model.chat_template" in changed["sft"].reason


def test_string_rows_are_rendered_like_the_prompts_the_pipeline_samples():
    from pipeline.data.loading import as_conversations

    rows = as_conversations([{"prompt": "Hi", "chosen": "yes", "rejected": "no", "margin": 1.0},
                             {"prompt": "Q", "completion": "A"}])
    assert rows[0] == {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant",
                       "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}], "margin": 1.0}
    assert rows[1]["completion"] == [{"role": "assistant", "content": "A"}]
