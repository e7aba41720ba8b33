"""OpenAI's grader objects (reinforcement fine-tuning and the graders API), as pydantic models, and
``parse_grader``: every check a grader needs before it may run, each failure a GraderError whose
``param`` is the dotted path of the field at fault (``grader.graders.exact.reference``).

Supported: ``string_check``, ``text_similarity`` (not its meteor and cosine metrics), ``python`` and
``multi``. The model-judged graders (``score_model``, ``label_model``) are refused by name: they need a
judge model, which this server does not run yet.
"""

from __future__ import annotations

import ast
import keyword
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tunesmith.errors import TunesmithError
from tunesmith.graders.formula import FUNCTIONS, Formula, FormulaError
from tunesmith.graders.templates import check_template, template_fields

# Limits on what a client sends; a grader runs for every sample of a training run.
MAX_NAME = 256  # a grader's name: a label in reports
MAX_TEMPLATE = 4096  # input, reference: a template names values, the values come from the data
MAX_SOURCE = 64 * 1024  # characters of a python grader's source
MAX_IMAGE_TAG = 256
MAX_FORMULA = 1024  # characters of a multi grader's calculate_output
MAX_SUB_GRADERS = 16  # in one multi grader
MAX_DEPTH = 3  # levels of graders: a multi in a multi, and the graders in that
MAX_GRADERS = 32  # in one grader's whole tree: every one runs for every sample
MAX_PYTHON_GRADERS = 4  # in one tree: each runs in a process of its own
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # a sub-grader's key: a name in calculate_output

SUPPORTED = ("string_check", "text_similarity", "python", "multi")
MODEL_GRADERS = ("score_model", "label_model")
REFUSED_METRICS = {"meteor": "needs WordNet data", "cosine": "needs an embeddings model"}

Name = Annotated[str, Field(max_length=MAX_NAME)]
Template = Annotated[str, Field(max_length=MAX_TEMPLATE)]


class GraderError(TunesmithError):
    """A grader that cannot run; ``param`` is the field at fault, for the API's 400."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StringCheckGrader(_Strict):
    type: Literal["string_check"]
    name: Name
    input: Template
    reference: Template
    operation: Literal["eq", "ne", "like", "ilike"]  # like: input contains reference; ilike: ignoring case


class TextSimilarityGrader(_Strict):
    type: Literal["text_similarity"]
    name: Name
    input: Template
    reference: Template
    evaluation_metric: Literal["fuzzy_match", "bleu", "gleu", "meteor", "cosine", "rouge_1", "rouge_2", "rouge_3",
                               "rouge_4", "rouge_5", "rouge_l"]
    # Set: the score is 1.0 where the metric reaches it, else 0.0 (a pass or fail, as in OpenAI's evals).
    pass_threshold: Annotated[float, Field(ge=0, le=1)] | None = None


class PythonGrader(_Strict):
    type: Literal["python"]
    name: Name
    source: Annotated[str, Field(max_length=MAX_SOURCE)]  # defines grade(sample, item) -> float
    image_tag: Annotated[str, Field(max_length=MAX_IMAGE_TAG)] | None = None  # OpenAI's; accepted, not used


class MultiGrader(_Strict):
    type: Literal["multi"]
    name: Name
    graders: dict[str, Grader]
    calculate_output: Annotated[str, Field(max_length=MAX_FORMULA)]


Grader = Annotated[StringCheckGrader | TextSimilarityGrader | PythonGrader | MultiGrader, Field(discriminator="type")]
MultiGrader.model_rebuild()
_GRADER = TypeAdapter(Grader)


def parse_grader(obj: Any) -> StringCheckGrader | TextSimilarityGrader | PythonGrader | MultiGrader:
    """The grader ``obj`` describes, checked whole; else GraderError naming the first field at fault."""
    _check_shape(obj, "grader", 1, {"graders": 0, "python": 0})
    try:
        grader = _GRADER.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _param(first["loc"])
        raise GraderError(f"{param}: {first['msg']}", param) from None
    _check(grader, "grader")
    return grader


def grader_dict(grader) -> dict:
    """The grader as JSON, as it is stored and returned."""
    return grader.model_dump(exclude_none=True)


def item_fields(grader) -> set[str]:
    """The top-level item fields the grader's templates reference: what every item must have.
    (A python grader reads the item as it likes: it names none.)"""
    if isinstance(grader, MultiGrader):
        return set().union(*(item_fields(g) for g in grader.graders.values()))
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        return template_fields(grader.input) | template_fields(grader.reference)
    return set()


def _check_shape(obj: Any, path: str, depth: int, counts: dict[str, int]) -> None:
    """What pydantic would check late or unclearly, before it walks the tree: the type of every
    grader (the model graders refused by name), its depth, and the size of the tree."""
    if not isinstance(obj, dict):
        raise GraderError(f"{path}: a grader is a JSON object", path)
    kind = obj.get("type")
    if kind in MODEL_GRADERS:
        raise GraderError(f"{path}.type: model graders ({', '.join(MODEL_GRADERS)}) are not supported offline "
                          "yet; use a python or string_check grader", f"{path}.type")
    if kind not in SUPPORTED:
        raise GraderError(f"{path}.type: must be one of {', '.join(SUPPORTED)}", f"{path}.type")
    counts["graders"] += 1
    counts["python"] += kind == "python"
    if counts["graders"] > MAX_GRADERS:
        raise GraderError(f"{path}: a grader may hold at most {MAX_GRADERS} graders in all", path)
    if counts["python"] > MAX_PYTHON_GRADERS:
        raise GraderError(f"{path}: a grader may hold at most {MAX_PYTHON_GRADERS} python graders", path)
    graders = obj.get("graders")
    if kind != "multi" or not isinstance(graders, dict):
        return
    if len(graders) > MAX_SUB_GRADERS:
        raise GraderError(f"{path}.graders: a multi grader holds at most {MAX_SUB_GRADERS} graders",
                          f"{path}.graders")
    for key, sub in graders.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key) or keyword.iskeyword(key) or key in FUNCTIONS:
            raise GraderError(f"{path}.graders: the key {str(key)[:80]!r} is not a name calculate_output can use: "
                              f"letters, digits and _ (at most 64), not a Python keyword nor one of "
                              f"{', '.join(FUNCTIONS)}", f"{path}.graders")
        if depth == MAX_DEPTH:
            raise GraderError(f"{path}.graders.{key}: graders nest at most {MAX_DEPTH} levels deep",
                              f"{path}.graders.{key}")
        _check_shape(sub, f"{path}.graders.{key}", depth + 1, counts)


def _param(loc: tuple) -> str:
    """pydantic's error location as a path from ``grader``, without the union's tags (the ``type``
    of each grader on the way, which pydantic adds as if it were a field)."""
    parts, rest = ["grader"], list(loc)
    if rest and rest[0] in SUPPORTED:
        rest.pop(0)
    while rest:
        part = rest.pop(0)
        parts.append(str(part))
        if part == "graders" and rest:  # a multi's key, then the tag of the grader under it
            parts.append(str(rest.pop(0)))
            if rest and rest[0] in SUPPORTED:
                rest.pop(0)
    return ".".join(parts)


def _fail(path: str, message: str) -> GraderError:
    return GraderError(f"{path}: {message}", path)


def _check(grader, path: str) -> None:
    """The checks pydantic cannot make: templates, metrics, the python source and the formula."""
    if isinstance(grader, StringCheckGrader | TextSimilarityGrader):
        for field in ("input", "reference"):
            try:
                check_template(getattr(grader, field))
            except ValueError as exc:
                raise _fail(f"{path}.{field}", str(exc)) from None
    if isinstance(grader, TextSimilarityGrader) and grader.evaluation_metric in REFUSED_METRICS:
        raise _fail(f"{path}.evaluation_metric",
                    f"{grader.evaluation_metric} {REFUSED_METRICS[grader.evaluation_metric]}, which is not "
                    "available offline; use fuzzy_match, bleu, gleu, rouge_1 to rouge_5 or rouge_l")
    if isinstance(grader, PythonGrader):
        try:
            tree = ast.parse(grader.source)
        except SyntaxError as exc:
            line = f" (line {exc.lineno})" if exc.lineno else ""
            raise _fail(f"{path}.source", f"not valid Python: {exc.msg}{line}") from None
        except (ValueError, RecursionError, MemoryError) as exc:  # null bytes; nesting the parser cannot take
            raise _fail(f"{path}.source", f"not valid Python: {str(exc) or type(exc).__name__}") from None
        if not any(isinstance(node, ast.FunctionDef) and node.name == "grade" for node in tree.body):
            raise _fail(f"{path}.source", "must define a top-level function grade(sample, item)")
    if isinstance(grader, MultiGrader):
        if not grader.graders:
            raise _fail(f"{path}.graders", "a multi grader needs at least one grader")
        try:
            Formula(grader.calculate_output, grader.graders)
        except FormulaError as exc:
            raise _fail(f"{path}.calculate_output", str(exc)) from None
        for key, sub in grader.graders.items():
            _check(sub, f"{path}.graders.{key}")
