"""Published learning-to-teach recipes as presets of ``DistillConfig`` (``recipe:``).

Each recipe is a set of settings of the one teacher objective

    L_T = meta_weight·L_quiz(θ'(φ)) + teacher_ce_weight·CE(T_φ(x), y)
          + teacher_student_weight·T²·KL(p_S ‖ p_T) + teacher_anchor_weight·T²·KL(p_T0 ‖ p_T)

plus a few schedule knobs; a preset fills only the fields a config did not set (``apply_recipe``).
Where each value comes from is in ``SOURCES`` and docs/teacher-objective.md.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # MetaDistil (Zhou et al., ACL 2022; JetRunner/MetaDistil, the NLP code): the quiz loss only,
    # teacher lr 0.2 x the student's (AdamW, clip 1.0, linear decay), pilot lr = the student's,
    # an MSE soft loss on the softened probabilities, the quiz loss over the whole held set.
    "metadistil": {"meta_weight": 1.0, "teacher_lr_ratio": 0.2, "teacher_optimizer": "adamw",
                   "teacher_grad_clip": 1.0, "student_lr_schedule": "linear", "teacher_lr_schedule": "linear",
                   "pilot_lr": "student", "divergence": "mse", "temperature": 5.0, "quiz_batches": "all"},
    # Meta Pseudo Labels (Pham et al., CVPR 2021; google-research meta_pseudo_labels): the teacher's
    # own supervised cross-entropy at weight 1 next to the feedback term; one lr for both.
    "mpl": {"meta_weight": 1.0, "teacher_ce_weight": 1.0, "teacher_lr_ratio": 1.0},
    # LGTM (Ren et al., ACL 2023; twinkle0331/LGTM utils_glue.py): the teacher's gradient is
    # ∇[0.6·CE(T(x), y) + 0.4·KL(p_S ‖ p_T)] plus the distillation influence through the student's
    # real step; teacher and student share one lr.
    "lgtm": {"meta_weight": 1.0, "teacher_ce_weight": 0.6, "teacher_student_weight": 0.4,
             "teacher_lr_ratio": 1.0, "pilot_lr": "student"},
}

SOURCES = {
    "metadistil": "JetRunner/MetaDistil (NLP code): quiz-only teacher, teacher lr 0.2x student, pilot lr = student lr, "
                  "MSE soft loss, quiz over the whole held set",
    "mpl": "google-research meta_pseudo_labels: teacher CE weight 1 + feedback term, one lr",
    "lgtm": "twinkle0331/LGTM utils_glue.py: 0.6 CE + 0.4 KL(p_S||p_T) + distillation influence, one lr",
}


def recipe_settings(name: str) -> dict[str, Any]:
    """The settings of recipe ``name`` (a copy); ValueError naming the recipes for an unknown one."""
    try:
        return dict(RECIPES[name])
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}") from None


def apply_recipe(config: Any, explicit: set[str]) -> dict[str, Any]:
    """Fill ``config``'s fields named by its recipe that are not in ``explicit`` (the fields the user
    set; an explicit ``teacher_lr`` keeps the recipe's ``teacher_lr_ratio`` out, which would override
    it); returns what it set (empty without a recipe)."""
    if config.recipe is None:
        return {}
    filled = {}
    for key, value in recipe_settings(config.recipe).items():
        if key in explicit or (key == "teacher_lr_ratio" and "teacher_lr" in explicit):
            continue  # a teacher_lr the config set is the teacher's lr: the recipe's ratio would override it
        setattr(config, key, value)
        filled[key] = value
    return filled


def describe(recipe: str, filled: dict[str, Any]) -> str:
    """One line saying what a recipe set."""
    if not filled:
        return f"recipe {recipe}: every one of its settings was set by the config; it changed nothing"
    return f"recipe {recipe} set " + ", ".join(f"{k}={v}" for k, v in filled.items())


__all__ = ["RECIPES", "SOURCES", "apply_recipe", "describe", "recipe_settings"]
