"""OpenAI's graders: the objects that score a model's answer for reinforcement fine-tuning and the
graders API (``/v1/fine_tuning/alpha/graders``).

``parse_grader`` checks a grader object a client sent (spec.py); ``Scorer`` grades (sample, item)
pairs with it (score.py). Templates name the item's and the sample's values (templates.py), a multi
grader combines its graders' scores by a checked formula (formula.py), and a python grader's source
runs in a limited child process (sandbox.py).
"""

from tunesmith.graders.score import Grade, Scorer
from tunesmith.graders.spec import (Grader, GraderError, MultiGrader, PythonGrader, StringCheckGrader,
                                    TextSimilarityGrader, grader_dict, item_fields, parse_grader)
from tunesmith.graders.templates import make_sample, template_fields

__all__ = ["Grade", "Grader", "GraderError", "MultiGrader", "PythonGrader", "Scorer", "StringCheckGrader",
           "TextSimilarityGrader", "grader_dict", "item_fields", "make_sample", "parse_grader", "template_fields"]
