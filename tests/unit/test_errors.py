"""One error taxonomy, one mapping table: every domain error has its gRPC status."""

from __future__ import annotations

import inspect

import grpc
import pytest

from bertserve.server import errors

ALL_ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.ServingError) and cls is not errors.ServingError
]

EXPECTED = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.TaskNotSupported: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def test_every_domain_error_is_in_the_table() -> None:
    assert set(ALL_ERRORS) == set(errors.STATUS_CODES) == set(EXPECTED)


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_domain_error_maps_to_its_status(cls: type[errors.ServingError]) -> None:
    assert errors.status_for(cls("message for people")) == EXPECTED[cls]


def test_subclass_of_a_domain_error_maps_like_its_parent() -> None:
    class TooManyTargets(errors.InvalidInput):
        pass

    assert errors.status_for(TooManyTargets("x")) == grpc.StatusCode.INVALID_ARGUMENT
