"""REST API v1 for sequences: define the steps, enrol recipients, move anchors, unenrol."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from common.db.connection import transaction
from services.ingest import sequences
from services.ingest.contract import Body, operation
from services.ingest.errors import ApiError
from services.ingest.sequence_models import (
    EnrolmentChange,
    EnrolmentView,
    NewEnrolment,
    NewSequence,
    SequenceView,
)

sequence_api = Blueprint("sequences", __name__, url_prefix="/v1")


@operation(sequence_api, "POST", "/sequences", summary="Define a sequence of steps", scope="messages:write",
           request=NewSequence, ok={201: Body(SequenceView, "Created.")}, errors=(409,))
def create_sequence(body: NewSequence) -> tuple[Response, int]:
    with transaction():
        made = sequences.create(g.workspace_id, body)
    if made is None:
        raise ApiError(409, "duplicate", f"this workspace already has a sequence named {body.name!r}", "name")
    return jsonify(made), 201


@operation(sequence_api, "GET", "/sequences/{sequence_id}", summary="Read a sequence", scope="messages:read",
           ok={200: Body(SequenceView, "The sequence.")}, errors=(404,))
def get_sequence(sequence_id: int) -> tuple[Response, int]:
    with transaction():
        found = sequences.get(g.workspace_id, sequence_id)
    if found is None:
        raise ApiError(404, "not_found", f"no sequence {sequence_id} in this workspace")
    return jsonify(found), 200


@operation(sequence_api, "POST", "/sequences/{sequence_id}/enrolments", summary="Enrol a recipient: each step is scheduled",
           scope="messages:write", request=NewEnrolment, ok={201: Body(EnrolmentView, "Enrolled, with each step's message.")},
           errors=(404,))
def enrol(sequence_id: int, body: NewEnrolment) -> tuple[Response, int]:
    with transaction():
        made = sequences.enrol(g.workspace_id, sequence_id, body)
    if made is None:
        raise ApiError(404, "not_found", f"no sequence {sequence_id} in this workspace")
    return jsonify(made), 201


@operation(sequence_api, "GET", "/enrolments/{enrolment_id}", summary="Read an enrolment and its steps", scope="messages:read",
           ok={200: Body(EnrolmentView, "The enrolment.")}, errors=(404,))
def get_enrolment(enrolment_id: int) -> tuple[Response, int]:
    with transaction():
        found = sequences.view(g.workspace_id, enrolment_id)
    if found is None:
        raise ApiError(404, "not_found", f"no enrolment {enrolment_id} in this workspace")
    return jsonify(found), 200


@operation(sequence_api, "PATCH", "/enrolments/{enrolment_id}", summary="Move anchors: pending steps move with them",
           scope="messages:write", request=EnrolmentChange, ok={200: Body(EnrolmentView, "Moved.")}, errors=(404,))
def move_anchors(enrolment_id: int, body: EnrolmentChange) -> tuple[Response, int]:
    with transaction():
        moved = sequences.move(g.workspace_id, enrolment_id, body)
    if moved is None:
        raise ApiError(404, "not_found", f"no active enrolment {enrolment_id} in this workspace")
    return jsonify(moved), 200


@operation(sequence_api, "DELETE", "/enrolments/{enrolment_id}", summary="Unenrol: the steps not yet sending are cancelled",
           scope="messages:write", ok={200: Body(EnrolmentView, "Unenrolled.")}, errors=(404,))
def unenrol(enrolment_id: int) -> tuple[Response, int]:
    with transaction():
        done = sequences.unenrol(g.workspace_id, enrolment_id)
    if done is None:
        raise ApiError(404, "not_found", f"no enrolment {enrolment_id} in this workspace")
    return jsonify(done), 200
