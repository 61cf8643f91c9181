"""Distillation: the loss is Hinton's, the teacher stays frozen and sees the student's batch, and
teachers load from firehose checkpoints (the weights best.pt was chosen by) or state dicts."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import Evil, make_state

from model import ModelConfig, build_model
from train.amp import Precision
from train.checkpoint import CheckpointError
from train.config import DistillConfig, OptimConfig
from train.distill import Distiller, load_teacher
from train.engine import TrainParts, train_step
from train.optim import build_optimizer
from train.profile import Profiler


def tiny(seed: int, classes: int = 10):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="resnet18", num_classes=classes))


def test_loss_is_alpha_t2_kl_plus_the_hard_loss():
    """By hand: at temperature 4, teacher logits (0, 0) give (1/2, 1/2) and student logits (4 ln 3, 0)
    give (3/4, 1/4), so KL(teacher || student) = ln(4/3) / 2 for each of the 2 rows (batch mean:
    the same). Random logits: against torch's own KL divergence."""
    hard = torch.tensor(1.7)
    s, t = torch.tensor([[4 * math.log(3), 0.0]] * 2), torch.zeros(2, 2)
    d = Distiller(torch.nn.Identity(), alpha=0.3, temperature=4.0)
    assert d.loss(s, t, hard).item() == pytest.approx(0.3 * 16 * math.log(4 / 3) / 2 + 0.7 * 1.7, rel=1e-6)
    torch.manual_seed(3)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    ref = F.kl_div((s / 3).log_softmax(1), (t / 3).softmax(1), reduction="batchmean") * 9
    assert Distiller(torch.nn.Identity(), 1.0, 3.0).loss(s, t, hard).item() == pytest.approx(ref.item(), rel=1e-5)
    assert Distiller(torch.nn.Identity(), 0.0, 2.0).loss(s, t, hard).item() == pytest.approx(1.7)
    assert Distiller(torch.nn.Identity(), 1.0, 2.0).loss(t, t, hard).item() == pytest.approx(0.0, abs=1e-6)


def test_teacher_is_frozen_and_sees_the_mixed_batch():
    student, teacher = tiny(0), tiny(1)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []
    teacher.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    student.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    optim_cfg = OptimConfig(mixup_alpha=0.4)
    d = Distiller(teacher, alpha=0.5, temperature=2.0)
    parts = TrainParts(student, build_optimizer(student, optim_cfg, 0.1), Precision("off", torch.device("cpu")),
                      torch.nn.CrossEntropyLoss(), None, optim_cfg, 10, 0, 0.1, mix_seed=0, distiller=d)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    before = student.fc.weight.clone()
    loss, _ = train_step(parts, images, labels, 0, Profiler(False, "", torch.device("cpu"), 0))
    assert math.isfinite(loss.item()) and not torch.equal(before, student.fc.weight)
    assert not teacher.training and all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # weights and BN statistics untouched
        assert torch.equal(v, frozen[k]), k
    assert len(seen) == 2 and torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], images)  # mixed, shared


def test_teacher_from_a_checkpoint_takes_the_selected_weights(tmp_path):
    state = make_state(1, 10)  # a resnet18 checkpoint with 10 classes (make_state's config says resnet18)
    state["config"]["model"]["num_classes"] = 10
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save({**state, "ema": ema, "selected_weights": "ema"}, tmp_path / "best.pt")
    teacher = load_teacher(DistillConfig(teacher=str(tmp_path / "best.pt"), teacher_model="resnet18"), 10, 3)
    assert torch.equal(teacher.state_dict()["fc.weight"], ema["fc.weight"])
    torch.save(tiny(2).state_dict(), tmp_path / "tv.pth")  # a torchvision-format state dict
    assert torch.equal(load_teacher(DistillConfig(teacher=str(tmp_path / "tv.pth"), teacher_model="resnet18"),
                                    10, 3).fc.weight, tiny(2).fc.weight)


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such teacher file"), ("other architecture", "holds a resnet18, but distill.teacher_model"),
    ("other classes", "head does not have the student's 10 classes"), ("pickle", "not weights-only")])
def test_bad_teachers_are_one_line_errors(tmp_path, case, needle):
    path, model = tmp_path / "t.pt", "resnet18"
    if case == "other architecture":
        torch.save(make_state(1, 10), path)
        model = "resnet34"
    elif case == "other classes":
        torch.save(tiny(0, classes=1000).state_dict(), path)
    elif case == "pickle":
        torch.save({"w": Evil(tmp_path / "pwned")}, path)
    with pytest.raises(CheckpointError, match=needle) as e:
        load_teacher(DistillConfig(teacher=str(path), teacher_model=model), 10, 3)
    assert "\n" not in str(e.value) and not (tmp_path / "pwned").exists()

