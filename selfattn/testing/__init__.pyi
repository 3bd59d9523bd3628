from dataclasses import dataclass
from os import PathLike
from typing import Any, Callable, Iterable, Literal, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import _Bool, _Causal, _Int, _Real, _Window

__all__ = [
    "check",
    "assert_implementation",
    "assert_attention_close",
    "cases",
    "Case",
    "CaseResult",
    "CheckReport",
    "NAMES",
    "TOLERANCES",
    "load_notebook",
    "load_module",
    "Submission",
    "CellError",
    "check_functions",
]

# the scores convention: "raw", "scaled" (None), or a positive factor; check also takes "either"
_Convention = Literal["raw", "scaled"] | _Real | None
_Scale = Literal["either"] | _Convention
_Path = str | PathLike[str]

NAMES: tuple[str, ...]
TOLERANCES: dict[np.dtype[Any], tuple[float, float]]

@dataclass(frozen=True, repr=False, eq=False)
class Case:
    name: str
    id: str
    label: str
    args: tuple[NDArray[Any], ...]
    expected: NDArray[Any]
    scale: float | None = None
    batched: bool = False
    large: bool = False
    kwargs: dict[str, Any] = ...
    grouped: bool = False
    @property
    def arg_names(self) -> tuple[str, ...]: ...
    @property
    def inputs(self) -> dict[str, NDArray[Any]]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    def shapes(self) -> str: ...
    def call(self) -> str: ...

@dataclass
class CaseResult:
    case: Case
    verdict: Literal["pass", "FAIL", "note"]
    message: str = ""
    hints: list[str] = ...
    max_error: float | None = None
    worst_index: tuple[int, ...] | None = None
    warnings: list[str] = ...
    matches: list[str] = ...
    nonfinite: bool = False
    unconfirmed_facts: str | None = None
    @property
    def passed(self) -> bool: ...

class CheckReport:
    name: str
    fn_name: str | None
    scale: float | None
    either: bool
    results: list[CaseResult]
    notes: list[str]
    def __init__(self, name: str, fn_name: str | None, scale: float | None,
                 results: Iterable[CaseResult], notes: Iterable[str] = (),
                 either: bool = False) -> None: ...
    @property
    def convention(self) -> str | float | None: ...
    @property
    def mistakes(self) -> list[str]: ...
    @property
    def passed(self) -> bool: ...
    def __bool__(self) -> bool: ...
    @property
    def failures(self) -> list[CaseResult]: ...
    @property
    def diagnoses(self) -> list[str]: ...
    def raise_if_failed(self) -> None: ...
    def summary(self) -> str: ...

def check(fn: Callable[..., Any], name: str | None = None, *, scale: _Scale = "either",
          seed: _Int = 0, is_causal: _Causal = False, window: _Window = None,
          gqa: _Bool = False) -> CheckReport: ...
def assert_implementation(fn: Callable[..., Any], name: str | None = None, *,
                          scale: _Scale = "either", seed: _Int = 0, is_causal: _Causal = False,
                          window: _Window = None, gqa: _Bool = False) -> None: ...
def assert_attention_close(actual: ArrayLike, desired: ArrayLike, *, rtol: _Real | None = None,
                           atol: _Real | None = None, err_msg: str = "") -> None: ...
def cases(name: str, *, scale: _Convention = None, seed: _Int = 0, batched: _Bool = True,
          is_causal: _Causal = False, window: _Window = None, gqa: _Bool = False) -> list[Case]: ...
def check_functions(functions: Mapping[str, Callable[..., Any]], scale: _Scale = "either",
                    seed: _Int = 0,
                    progress: Callable[[dict[str, CheckReport | None]], object] | None = None,
                    ) -> dict[str, CheckReport | None]: ...

@dataclass
class CellError:
    cell: int
    error: str
    line: str = ""

class Submission:
    path: str
    namespace: dict[str, Any]
    functions: dict[str, Callable[..., Any]]
    missing: list[str]
    borrowed: list[str]
    errors: list[CellError]
    skipped: list[str]
    output: str
    n_cells: int
    notes: list[str]
    def __init__(self, path: _Path, namespace: dict[str, Any], errors: list[CellError],
                 skipped: list[str], output: str, n_cells: int,
                 notes: Iterable[str] = (), sources: Iterable[str] = ()) -> None: ...
    def problems(self) -> list[str]: ...
    # the submission's own names: submission.softmax_attention_weights
    def __getattr__(self, name: str) -> Any: ...

def load_notebook(path: _Path, *, timeout: _Real | None = None) -> Submission: ...
def load_module(path: _Path, *, timeout: _Real | None = None) -> Submission: ...
