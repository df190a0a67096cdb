r"""Request bodies, path ids and query parameters, validated (bodies with pydantic v2).

Every problem is reported at once, under the canonical snake_case field name whatever
spelling the client used (``videoUrl`` and ``url`` are reported as ``video_url``).
Strings are strict (a number is not a string), unknown fields are ignored.

Charsets, chosen so that an id can sit in a URL path or a log line unescaped (each is a
whole-string match: the patterns end in ``\\Z``, so a trailing newline never passes):

* company names: ``^[A-Za-z0-9][A-Za-z0-9_.\\- ]{0,127}$`` (after stripping);
* interaction and company ids: ``^[A-Za-z0-9][A-Za-z0-9_.:\\-]{0,127}$`` (UUIDs, numbers);
* job ids: ``^[A-Za-z0-9_\\-]{1,64}$``;
* bucket names: ``^[a-z0-9][a-z0-9._\\-]{2,62}$``; sources: ``^[a-z][a-z0-9_\\-]{0,31}$``;
* questions: 1..2000 characters after stripping, any script, no control characters
  other than tab and newline.
* ``video_url``: ``web.video_urls`` (known video shapes only; the job carries the
  canonical URL built from the video's id); ``meeting_link``: ``web.meeting_links`` (a
  public web address, rebuilt from its checked parts).

Query parameters are read with ``query_value`` and ``query_int``: a parameter given more
than once is refused (which value was meant is not guessed), and integers are ASCII decimal
digits only (``int()`` and ``str.isdigit()`` also take ``'\u0661'``, ``'\u00b2'``, ``' 5'``,
``'+5'``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from werkzeug.datastructures import MultiDict

from web.errors import RequestInvalid, validation_details
from web.meeting_links import check_meeting_link
from web.video_urls import VideoUrl, check_video_url

COMPANY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,127}\Z")
EXTERNAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}\Z")
JOB_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}\Z")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._\-]{2,62}\Z")
SOURCE = re.compile(r"^[a-z][a-z0-9_\-]{0,31}\Z")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
DECIMAL = re.compile(r"[0-9]{1,9}\Z")
"""An integer query value: ASCII digits only, short enough that ``int()`` is cheap."""
QUESTION_MAX = 2000
URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
"""A ``source`` that is an address (any scheme: the knowledge source's policy judges it)."""

CANONICAL_NAMES = {
    "videoUrl": "video_url", "url": "video_url", "companyName": "company_name",
    "companyId": "company_id", "meetingLink": "meeting_link", "bucketName": "bucket_name",
    "createQudemo": "create_qudemo", "knowledgeSource": "knowledge_source",
}


def _matches(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        raise ValueError(what)
    return value


def _company_name(value: str) -> str:
    return _matches(value, COMPANY_NAME, "must be 1-128 characters: letters, digits, "
                    "spaces, '_', '.', '-', starting with a letter or digit")


def _optional_company_id(value: str | None) -> str | None:
    if not value:
        return None
    return _matches(value, EXTERNAL_ID, "must be 1-128 characters: letters, digits, "
                    "'_', '.', ':', '-', starting with a letter or digit")


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    missing_hints: ClassVar[Mapping[str, str]] = {}
    """Messages for missing fields that deserve more than "Field required"."""

    def problems(self) -> list[dict[str, str]]:
        """Return problems involving several fields (run once each field is valid)."""
        return []


class VideoBody(_Body):
    """``POST /api/video/process``: snake_case or camelCase."""

    video_url: str = Field(validation_alias=AliasChoices("video_url", "videoUrl"))
    company_name: str = Field(validation_alias=AliasChoices("company_name", "companyName"))
    company_id: str | None = Field(None, validation_alias=AliasChoices("company_id", "companyId"))
    source: str | None = None
    meeting_link: str | None = Field(
        None, validation_alias=AliasChoices("meeting_link", "meetingLink"))
    bucket_name: str | None = Field(
        None, validation_alias=AliasChoices("bucket_name", "bucketName"))
    create_qudemo: StrictBool = Field(
        False, validation_alias=AliasChoices("create_qudemo", "createQudemo"))
    _video: VideoUrl | None = PrivateAttr(None)

    @field_validator("video_url")
    @classmethod
    def _video_url(cls, value: str, info: ValidationInfo) -> str:
        allowed: Iterable[str] = (info.context or {}).get("allowed_hosts", ())
        check_video_url(value, allowed)  # the canonical URL is kept by the model validator
        return value

    @field_validator("company_name")
    @classmethod
    def _company_name(cls, value: str) -> str:
        return _company_name(value)

    @field_validator("company_id")
    @classmethod
    def _company_id(cls, value: str | None) -> str | None:
        return _optional_company_id(value)

    knowledge_source: str | None = Field(
        None, validation_alias=AliasChoices("knowledge_source", "knowledgeSource"))

    @model_validator(mode="before")
    @classmethod
    def _source_as_address(cls, raw: Any) -> Any:
        # The web client sends its "Product Knowledge Source" input as ``source``: an
        # address there is that knowledge source, and the platform comes from video_url.
        if isinstance(raw, dict):
            source = raw.get("source")
            if isinstance(source, str) and URL_LIKE.match(source.strip()):
                explicit = raw.get("knowledge_source", raw.get("knowledgeSource"))
                raw = {k: v for k, v in raw.items() if k != "source"}
                if not explicit:
                    raw["knowledge_source"] = source
        return raw

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if not value:
            return None
        return _matches(value.lower(), SOURCE, "must be a short lower-case word such as "
                        "youtube or loom, or the knowledge source's web address")

    @field_validator("knowledge_source")
    @classmethod
    def _knowledge_source(cls, value: str | None) -> str | None:
        if not value:
            return None
        return check_meeting_link(value)  # a public web address, like a meeting link

    @field_validator("meeting_link")
    @classmethod
    def _meeting_link(cls, value: str | None) -> str | None:
        if not value:
            return None
        return check_meeting_link(value)  # its own policy: a public web address

    @field_validator("bucket_name")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if not value:
            return None
        return _matches(value, BUCKET_NAME, "must be 3-63 characters: lower-case letters, "
                        "digits, '.', '_', '-'")

    @model_validator(mode="after")
    def _remember_video(self, info: ValidationInfo) -> VideoBody:
        # Cheap to redo, and keeps the parsed host and duplicate key next to the model.
        allowed: Iterable[str] = (info.context or {}).get("allowed_hosts", ())
        self._video = check_video_url(self.video_url, allowed)
        return self

    @property
    def video(self) -> VideoUrl:
        """The checked video URL (host, source family, duplicate key)."""
        assert self._video is not None  # set by the model validator
        return self._video

    def problems(self) -> list[dict[str, str]]:
        """The source must agree with the host; a host of no known family needs one."""
        known = self.video.source
        if known is None and self.source is None:
            return [{"field": "source", "message": "is required for this video host"}]
        if known is not None and self.source not in (None, known):
            return [{"field": "source",
                     "message": f"{self.source!r} does not match the video host ({known})"}]
        return []

    def job_data(self) -> dict[str, Any]:
        """Return the data a video job carries to the worker."""
        data: dict[str, Any] = {
            "video_url": self.video.url,  # canonical, built from the id: never the raw string
            "company_name": self.company_name,
            "source": self.source or self.video.source,
            "create_qudemo": self.create_qudemo,
        }
        optional = {"meeting_link": self.meeting_link, "bucket_name": self.bucket_name,
                    "company_id": self.company_id, "knowledge_source": self.knowledge_source}
        data.update({k: v for k, v in optional.items() if v is not None})
        return data

    def dedupe_key(self) -> str:
        """Return the key under which the same video for the same company is one job."""
        return f"video:{self.company_name.lower()}:{self.video.key}"


class ClientVideoBody(VideoBody):
    """``POST /api/video/videos``: the body the QuDemo web client sends."""

    # The worker needs the company's name for the Python API's path. A body with only
    # companyId has its name filled in from Supabase (web.submit) when Supabase is
    # configured; without it, the body is refused with that reason.
    missing_hints: ClassVar[Mapping[str, str]] = {
        "company_name": "Field required (send companyName; a companyId alone is resolved "
                        "to a company name when the token pairs it with a companyName claim "
                        "or Supabase is configured)",
    }

    video_url: str = Field(validation_alias=AliasChoices("videoUrl", "video_url", "url"))
    company_name: str = Field(validation_alias=AliasChoices("companyName", "company_name"))
    create_qudemo: StrictBool = Field(
        True, validation_alias=AliasChoices("create_qudemo", "createQudemo"))


class QuestionBody(_Body):
    """``POST /api/interactions/<interactionId>/questions``."""

    question: str
    company_name: str = Field(validation_alias=AliasChoices("companyName", "company_name"))
    company_id: str | None = Field(None, validation_alias=AliasChoices("company_id", "companyId"))

    @field_validator("company_id")
    @classmethod
    def _company_id(cls, value: str | None) -> str | None:
        return _optional_company_id(value)

    @field_validator("question")
    @classmethod
    def _question(cls, value: str) -> str:
        if not any(c.isprintable() and not c.isspace() for c in value):
            raise ValueError("must not be empty")  # nor only invisible characters
        if len(value) > QUESTION_MAX:
            raise ValueError(f"must be at most {QUESTION_MAX} characters")
        if CONTROL.search(value):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("company_name")
    @classmethod
    def _company_name(cls, value: str) -> str:
        return _company_name(value)


def parse_body(model: type[_Body], raw: Any, *, context: Mapping[str, Any] | None = None,
               extra: list[dict[str, str]] | None = None) -> Any:
    """Validate ``raw`` as ``model``; raise ``RequestInvalid`` listing every problem.

    ``extra`` carries problems already found elsewhere (path ids) so they are reported
    together with the body's.
    """
    problems = list(extra or [])
    parsed: _Body | None = None
    try:
        parsed = model.model_validate(raw, context=dict(context or {}))
    except ValidationError as exc:
        for detail in validation_details(exc, CANONICAL_NAMES):
            if detail["message"] == "Field required" and detail["field"] in model.missing_hints:
                detail["message"] = model.missing_hints[detail["field"]]
            problems.append(detail)
    if parsed is not None:
        problems.extend(parsed.problems())
    if problems:
        raise RequestInvalid(details=problems)
    return parsed


def check_path_id(value: str, field: str, pattern: re.Pattern[str] = EXTERNAL_ID) -> list[
        dict[str, str]]:
    """Return the problem with a path id, as a ``details`` list (empty when it is fine)."""
    if pattern.match(value):
        return []
    return [{"field": field, "message": "has an invalid length or characters"}]


def query_value(args: MultiDict[str, str], name: str,
                problems: list[dict[str, str]]) -> str | None:
    """Return the value of query parameter ``name``, or ``None`` when it is absent.

    A parameter given more than once is a problem (and ``None``): answering for one of
    the values would be a guess.
    """
    values = args.getlist(name)
    if len(values) > 1:
        problems.append({"field": name, "message": "must be given at most once"})
        return None
    return values[0] if values else None


def query_int(args: MultiDict[str, str], name: str, default: int, *, minimum: int,
              maximum: int, problems: list[dict[str, str]]) -> int:
    """Return query parameter ``name`` as an integer in ``[minimum, maximum]``.

    Absent: ``default``. Anything but ASCII decimal digits in range (an empty value too)
    is a problem, and ``default`` is returned so that the caller can go on collecting.
    """
    text = query_value(args, name, problems)
    if text is None:
        return default
    if DECIMAL.match(text) and minimum <= int(text) <= maximum:
        return int(text)
    problems.append({"field": name, "message": f"must be an integer from {minimum} to {maximum}"})
    return default
