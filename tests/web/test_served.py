"""`make run` serves the widget demo and the console and prints their URLs in the ready banner."""

from __future__ import annotations

import json
import urllib.request


def test_the_ready_banner_prints_the_page_urls_and_they_answer(cloud):
    assert f"Customer widget: {cloud.web_url}/" in cloud.output
    assert f"Agent console:   {cloud.web_url}/console" in cloud.output
    for path in ("/", "/console", "/widget/oncechat-widget.js", "/sdk/oncechat.js"):
        with urllib.request.urlopen(cloud.web_url + path, timeout=30) as resp:
            assert resp.status == 200
    with urllib.request.urlopen(cloud.web_url + "/config.json", timeout=30) as resp:
        config = json.loads(resp.read())
    # The pages learn the APIs from this file, generated from the ports the cloud runs on.
    assert config["restUrl"] == cloud.rest_url and config["websocketUrl"] == cloud.websocket_url
