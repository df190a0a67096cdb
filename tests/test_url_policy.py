"""The URL policies by shape: the crafted corpus, what is forwarded, and duplicates."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from actors import JobSystem
from tests.standin import PythonApiStandIn
from tests.url_corpus import (
    LOOM,
    LOOM_ID,
    MEETING_ACCEPTED,
    MEETING_REFUSED,
    VIDEO_ACCEPTED,
    VIDEO_REFUSED,
    VIDEO_URLS,
    YT,
    YT_ID,
    youtube_url,
)
from tests.web_support import make_app, wait_job
from web.settings import DEFAULT_VIDEO_HOSTS
from web.video_urls import check_video_url


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system, rate_limit_max_requests=100_000).test_client()


def test_video_url_policy_over_the_corpus() -> None:
    wrong = []
    for url, expected in VIDEO_URLS.items():
        try:
            checked = check_video_url(url, DEFAULT_VIDEO_HOSTS)
        except ValueError:
            if expected is not None:
                wrong.append(f"refused {url!r}")
            continue
        if checked.url != expected or checked.key != f"{checked.source}:{checked.video_id}":
            wrong.append(f"{url!r} -> {checked.url!r}, key {checked.key!r}")
    assert wrong == []


def test_every_refused_video_url_is_a_400_naming_video_url(client: FlaskClient) -> None:
    assert len(VIDEO_REFUSED) >= 100 and len(VIDEO_URLS) + len(MEETING_REFUSED) >= 250
    assert not set(VIDEO_ACCEPTED) & set(VIDEO_REFUSED)
    for path, field in (("/api/video/process", "video_url"), ("/api/video/videos", "videoUrl")):
        for url in VIDEO_REFUSED:
            reply = client.post(path, json={field: url, "company_name": "acme",
                                            "source": "youtube"})
            assert reply.status_code == 400, (url, reply.json)
            assert [d["field"] for d in reply.json["details"]] == ["video_url"], (url, reply.json)
            assert reply.json["details"][0]["message"], url


def test_every_accepted_video_is_forwarded_canonical(client: FlaskClient,
                                                    standin: PythonApiStandIn) -> None:
    expected: dict[str, str] = {}
    for number, (url, canonical) in enumerate(VIDEO_ACCEPTED.items()):
        company = f"c{number}"  # one company each: two spellings of a video are one job
        reply = client.post("/api/video/process", json={"video_url": url, "company_name": company})
        assert reply.status_code == 202, (url, reply.json)
        data = client.get(reply.headers["Location"]).json["data"]["data"]
        assert data["video_url"] == canonical, url
        expected[company] = canonical
    standin.wait_for(lambda s: len(s.calls("process-video")) == len(expected), 20)
    sent = {c.path.rsplit("/", 1)[1]: c.body["video_url"] for c in standin.calls("process-video")}
    assert sent == expected


def test_redirectors_are_refused_with_a_clear_message(client: FlaskClient) -> None:
    reply = client.post("/api/video/process", json={
        "video_url": "https://www.youtube.com/redirect?q=http://169.254.169.254/",
        "company_name": "acme"})
    (detail,) = reply.json["details"]
    assert detail["field"] == "video_url"
    assert "redirect" in detail["message"] and "watch?v=<id>" in detail["message"]
    unknown = client.post("/api/video/process", json={
        "video_url": "https://www.loom.com/looms/videos", "company_name": "acme"})
    assert "is not a Loom video URL" in unknown.json["details"][0]["message"]


def test_two_spellings_of_one_video_are_duplicates(client: FlaskClient,
                                                   standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    try:
        for first, second in (
                (f"https://www.loom.com/share/Demo-{LOOM_ID}?sid=1",
                 f"https://loom.com/embed/{LOOM_ID.upper()}"),
                (f"https://youtu.be/{YT_ID}?si=x", f"https://m.youtube.com/shorts/{YT_ID}"),
                ("https://player.vimeo.com/video/42?h=abcdef1234", "https://vimeo.com/42/")):
            one = client.post("/api/video/process", json={"video_url": first,
                                                          "company_name": "acme"})
            assert one.status_code == 202, one.json
            two = client.post("/api/video/process", json={"video_url": second,
                                                          "company_name": "ACME"})
            assert two.status_code == 409, (first, second, two.json)
            assert two.json["data"]["jobId"] == one.json["data"]["jobId"]
    finally:
        standin.release("process-video")


def test_meeting_links_are_checked_and_forwarded_rebuilt(client: FlaskClient,
                                                          standin: PythonApiStandIn) -> None:
    for link in MEETING_REFUSED:
        reply = client.post("/api/video/process", json={
            "video_url": YT, "company_name": "acme", "meetingLink": link})
        assert reply.status_code == 400, (link, reply.json)
        assert [d["field"] for d in reply.json["details"]] == ["meeting_link"], link
    for number, (link, forwarded) in enumerate(MEETING_ACCEPTED.items()):
        reply = client.post("/api/video/process", json={
            "video_url": youtube_url(f"meet{number}"), "company_name": "acme",
            "meeting_link": link})
        assert reply.status_code == 202, (link, reply.json)
        job = wait_job(client, reply.headers["Location"], standin)
        assert job["data"]["meeting_link"] == forwarded, link
    assert {c.body["meeting_link"] for c in standin.calls("process-video")} == set(
        MEETING_ACCEPTED.values())


def test_platform_hosts_keep_their_shapes_under_a_wider_allow_list() -> None:
    allowed = ("*.youtube.com", "youtube.com", "youtube-nocookie.com", "*.loom.com",
               "videos.example.com")
    nocookie = check_video_url(f"https://youtube-nocookie.com/embed/{YT_ID}", allowed)
    assert nocookie.url == YT
    assert check_video_url(f"https://music.youtube.com/watch?v={YT_ID}", allowed).url == YT
    for url in ("https://accounts.youtube.com/accounts/SetSID?continue=http://10.0.0.1/",
                "https://www.youtube.com/redirect?q=http://10.0.0.1/",
                f"https://cdn.loom.com/share/{LOOM_ID}",
                f"https://youtube-nocookie.com/watch?v={YT_ID}"):
        with pytest.raises(ValueError):
            check_video_url(url, allowed)
    assert check_video_url(f"https://www.loom.com/share/{LOOM_ID}", allowed).url == LOOM


def test_an_operator_host_is_taken_as_given_normalised() -> None:
    checked = check_video_url("https://Videos.Example.com:443/v/42?utm_source=x&q=1#frag",
                              ("videos.example.com",))
    assert checked.source is None and checked.video_id is None
    assert checked.url == "https://videos.example.com/v/42?utm_source=x&q=1"
    assert checked.key == "videos.example.com/v/42?q=1"
