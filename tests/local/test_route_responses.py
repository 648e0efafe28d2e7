"""Two-way routes: the local gateway takes them from the project's templates, and the app's
``REPLIES`` setting is ``route`` exactly where the stack gives $default a route response."""

from __future__ import annotations

import json
from pathlib import Path

from infra.local.aws import load_template
from infra.local.runtime import two_way_routes

ROOT = Path(__file__).resolve().parents[2]


def test_this_project_declares_default_two_way():
    assert two_way_routes(ROOT) == frozenset({"$default"})


def test_route_responses_are_read_from_every_infra_template(tmp_path):
    assert two_way_routes(tmp_path) == frozenset()  # no infra/: every route one-way, as on AWS
    infra = tmp_path / "infra"
    infra.mkdir()
    (infra / "notes.yaml").write_text("- not a template\n")
    (infra / "overlay.yaml").write_text(
        "Resources:\n"
        "  Answer:\n"
        "    Type: AWS::ApiGatewayV2::RouteResponse\n"
        "    Properties: {ApiId: !Ref WebsocketAPI, RouteId: !Ref WebsocketConnectRoute,"
        " RouteResponseKey: $default}\n"
        "  Elsewhere:\n"
        "    Type: AWS::ApiGatewayV2::RouteResponse\n"
        "    Properties: {ApiId: x, RouteId: some-other-api-route, RouteResponseKey: $default}\n")
    assert two_way_routes(tmp_path) == frozenset({"$connect"})


def test_replies_go_by_route_only_where_the_route_response_exists():
    aws = load_template(ROOT / "infra/aws.yaml")["Resources"]
    assert aws["WebsocketMessageRouteResponse"]["Properties"]["RouteId"] == {"Ref": "WebsocketMessageRoute"}
    assert aws["WebsocketMessageRoute"]["Properties"]["RouteResponseSelectionExpression"] == "$default"
    assert aws["WebsocketMessage"]["Properties"]["Environment"]["Variables"]["REPLIES"] == "route"
    config = json.loads((ROOT / ".chalice/config.json").read_text())
    for name, stage in config["stages"].items():
        stage_wide = stage.get("environment_variables", {}).get("REPLIES")
        scoped = {f: v.get("environment_variables", {}).get("REPLIES")
                  for f, v in stage.get("lambda_functions", {}).items()}
        # Local stages: the local gateway finds the route response in infra/aws.yaml
        # (the local cloud runs every function in one process, so the setting is
        # stage-wide there). AWS stages get it with the route response, from the
        # same template (make package), never from config.json: a `chalice
        # deploy` without the template keeps pushing.
        assert stage_wide == ("route" if name in ("local", "chaos") else None), name
        assert not any(scoped.values()), name
