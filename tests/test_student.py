"""build_student: a student built from a teacher that is already frozen still trains."""
import pytest

from espnet_plugin.distill.student import build_student
from espnet_plugin.models import GateConfig, SpeechEncoder
from tests.conftest import tiny_config


@pytest.mark.parametrize("gates", [GateConfig(), GateConfig.all_on()], ids=["plain", "gated"])
@pytest.mark.parametrize("student_conf", [None, {"num_layers": 1}], ids=["copy", "smaller"])
def test_student_of_a_frozen_teacher_trains_every_weight(gates, student_conf):
    teacher = SpeechEncoder(tiny_config(num_layers=2)).freeze()  # as DistillPruneModel leaves it
    student = build_student(teacher, gates, student_conf=student_conf)
    assert student.training
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
