"""Speech-enhancement distillation on ESPnet enh models (two-step KD for tiny students).

* ``features``: forward hooks on module paths, reshaping to (B, T, C) with a frame mask;
* ``output_distill``: the student's enhanced waveform against the teacher's;
* ``model``: ``EnhDistillModel``, the ESPnet model of ``tasks/enh_distill.py`` (teacher kept
  outside the module tree, stages ``kd`` / ``supervised`` / ``one_step``);
* ``export``: the student of a checkpoint as a plain ESPnet enh model (``enh_inference``);
* ``costs``: parameters, algorithmic latency and one-thread real-time factor.

See docs/enhancement.md. Only ``model``, ``export`` and ``costs`` import ESPnet.
"""
