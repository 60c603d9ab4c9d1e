"""Benchmarks: each experiment is a module with ``main(argv)``, run as ``metakd bench NAME`` or
``python benchmarks/NAME.py``; each prints a table and writes ``results/NAME.{json,md,png}``."""

BENCHMARKS = {
    "meta-update": "metakd.bench.meta_update",
    "meta-grad": "metakd.bench.meta_grad",
    "meta-step-cost": "metakd.bench.meta_step_cost",
    "teacher-terms": "metakd.bench.teacher_terms",
    "profile-meta-step": "metakd.bench.profile_meta_step",
    "lm-chunking": "metakd.bench.lm_chunking",
    "quantized-teacher": "metakd.bench.quantized_teacher",
    "temperature": "metakd.bench.temperature",
    "feature-layers": "metakd.bench.feature_layers",
    "student-lora-vs-full": "metakd.bench.student_lora_vs_full",
    "kd-vs-meta": "metakd.bench.kd_vs_meta",
    "scaling": "metakd.bench.scaling",
    "compression": "metakd.bench.compression",
    "quality": "metakd.bench.quality",
    "anchored": "metakd.bench.anchored",
    "gpu": "metakd.bench.gpu",
}
