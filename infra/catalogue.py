"""Every event and command type Talaria writes to the log, in one place.

Facts are past tense and never change; commands (`ProcessSeries`, `DispatchSeries`, `Notify`)
are imperative and travel on one topic per priority lane. Each class names its current
`VERSION`; when a payload changes shape, bump it and register an upcaster from the old version
with `CATALOGUE.upcaster(TYPE, old_version)`.
"""

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field, JsonValue

from infra.events import Catalogue, Payload, Value
from infra.topics import CommandKind, Lane, Topic, command_topic, retry_topic

CATALOGUE = Catalogue()

Tags = dict[str, str]
JsonObject = dict[str, Any]


class BlobReference(Value):
    """Where an instance's bytes are, and how to check them."""

    key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


# --- families: where each kind of payload goes, and what keeps it in order -------------------


class StudyFact(Payload):
    """A fact about a study's instances or series; keyed by StudyInstanceUID."""

    TOPIC: ClassVar[Topic] = Topic.SERIES
    study_uid: str

    def topic(self) -> Topic:
        return self.TOPIC

    def partition_key(self) -> str:
        return self.study_uid


class IntakeFact(Payload):
    """A fact about an association or a rejected instance; keyed by the peer's AE."""

    calling_aet: str
    called_aet: str
    peer_address: str
    peer_port: int

    def topic(self) -> Topic:
        return Topic.INSTANCES

    def partition_key(self) -> str:
        return self.calling_aet or self.peer_address


class JobFact(Payload):
    """A fact about a processing, dispatch or notification job; keyed by job id."""

    job_id: str

    def topic(self) -> Topic:
        return Topic.JOBS

    def partition_key(self) -> str:
        return self.job_id


class ConfigChanged(Payload):
    """A configuration change with who made it (envelope actor) and the before/after."""

    name: str
    before: JsonObject | None = None
    after: JsonObject | None = None

    def topic(self) -> Topic:
        return Topic.CONFIG

    def partition_key(self) -> str:
        return f"{self.TYPE.removesuffix('Saved').removesuffix('Deleted').lower()}:{self.name}"


class OperatorAction(Payload):
    """Something an operator did; the actor is on the envelope."""

    def topic(self) -> Topic:
        return Topic.OPERATIONS

    def partition_key(self) -> str:
        return self.TYPE


class Command(Payload):
    """An instruction to an executor, on the topic of its kind and priority lane."""

    KIND: ClassVar[CommandKind]
    lane: Lane = Lane.NORMAL
    study_uid: str

    def topic(self) -> Topic:
        return command_topic(self.KIND, self.lane)

    def partition_key(self) -> str:
        return self.study_uid


class RetriableCommand(Command):
    """A command an executor schedules again after a transient failure: the retry waits on
    its kind's retry topic until `not_before`."""

    attempt: int = Field(default=1, ge=1)
    not_before: datetime | None = Field(
        default=None, description="A retry: not to be carried out before this moment."
    )

    def topic(self) -> Topic:
        return retry_topic(self.KIND) if self.not_before is not None else super().topic()


# --- intake ------------------------------------------------------------------------------------


@CATALOGUE.register
class InstanceReceived(StudyFact):
    """An instance is durable in the blob store; its routing tags are snapshotted here."""

    TYPE = "InstanceReceived"
    TOPIC = Topic.INSTANCES
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob: BlobReference
    intake: Literal["dicom", "stow", "upload", "import", "retrieve"] = "dicom"
    calling_aet: str = ""
    called_aet: str = ""
    peer_address: str = ""
    peer_port: int = 0
    tags: Tags = Field(default_factory=dict)
    job_id: str | None = Field(default=None, description="The query job that retrieved it.")


@CATALOGUE.register
class InstanceRejected(IntakeFact):
    """An instance was refused; the sender got `status`."""

    TYPE = "InstanceRejected"
    status: int
    reason: str
    sop_uid: str | None = None


@CATALOGUE.register
class AssociationAccepted(IntakeFact):
    TYPE = "AssociationAccepted"
    association_id: str


@CATALOGUE.register
class AssociationReleased(IntakeFact):
    TYPE = "AssociationReleased"
    association_id: str
    instances: int = 0


@CATALOGUE.register
class AssociationAborted(IntakeFact):
    TYPE = "AssociationAborted"
    association_id: str
    instances: int = 0


@CATALOGUE.register
class AssociationRejected(IntakeFact):
    TYPE = "AssociationRejected"
    reason: str


# --- completion and decisions ------------------------------------------------------------------


@CATALOGUE.register
class SeriesCompleted(StudyFact):
    """No instance arrived for the series' completion timeout."""

    TYPE = "SeriesCompleted"
    series_uid: str
    completion_id: str
    instance_count: int = Field(ge=1)
    blobs: list[BlobReference]
    tags: Tags
    late_arrival: bool = False


@CATALOGUE.register
class StudyCompleted(StudyFact):
    """A study-level rule's collection of series is complete (or was forced to be).

    Carries everything its decision needs: the series' blobs, the tags of the first series
    and the descriptions received, so the decision is a function of this event and the rules.
    `action` is "discard" when a forced completion's rule says to discard.
    """

    TYPE = "StudyCompleted"
    completion_id: str
    series_uids: list[str]
    reason: Literal["timeout", "received_series", "forced", "operator"]
    rule: str | None = None
    action: Literal["proceed", "discard"] = "proceed"
    series_completions: list[str] = Field(default_factory=list)
    received_series: list[str] = Field(default_factory=list)
    blobs: list[BlobReference] = Field(default_factory=list)
    tags: Tags = Field(default_factory=dict)


class StudyDeferral(Value):
    """A study-level rule matched a series: the series waits for the study, on these terms."""

    rule: str
    condition: Literal["timeout", "received_series"] = "timeout"
    required_series: str = ""
    force_action: Literal["discard", "proceed", "ignore"] = "discard"


@CATALOGUE.register
class RulesEvaluated(StudyFact):
    """The rules were evaluated for a completed series or study (or a reprocessing request)."""

    TYPE = "RulesEvaluated"
    series_uid: str | None = None
    completion_id: str
    matched_rules: list[str]
    fallback_used: bool = False
    forced_rule: str | None = None
    discarded_by: str | None = None
    deferred: list[StudyDeferral] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict)


@CATALOGUE.register
class ReprocessRejected(StudyFact):
    """A reprocessing request that cannot be carried out (unknown or purged series)."""

    TYPE = "ReprocessRejected"
    series_uid: str | None = None
    reason: str


@CATALOGUE.register
class SeriesDiscarded(StudyFact):
    TYPE = "SeriesDiscarded"
    series_uid: str
    reason: str
    rule: str | None = None


# --- jobs ----------------------------------------------------------------------------------------


@CATALOGUE.register
class ProcessingStarted(JobFact):
    TYPE = "ProcessingStarted"
    rule: str
    modules: list[str]
    attempt: int = Field(ge=1)


@CATALOGUE.register
class ProcessingStepCompleted(JobFact):
    TYPE = "ProcessingStepCompleted"
    step: int = Field(ge=0)
    module: str
    exit_code: int
    duration_s: float
    output_count: int
    result: JsonValue = None
    """The module's `result.json`, any JSON (as mercure stores it); None when it wrote none."""
    log_key: str | None = None
    outputs: list[BlobReference] = Field(default_factory=list)
    """The job's stored outputs, on the last step's event (what a `both` rule dispatches)."""


@CATALOGUE.register
class ProcessingFailed(JobFact):
    TYPE = "ProcessingFailed"
    reason: str
    step: int | None = None
    will_retry: bool = False


@CATALOGUE.register
class DispatchStarted(JobFact):
    TYPE = "DispatchStarted"
    target: str
    attempt: int = Field(ge=1)
    instance_count: int


@CATALOGUE.register
class DispatchSucceeded(JobFact):
    TYPE = "DispatchSucceeded"
    target: str
    attempt: int = Field(ge=1)
    confirmed: int
    warnings: int = 0


@CATALOGUE.register
class DispatchFailed(JobFact):
    TYPE = "DispatchFailed"
    target: str
    attempt: int = Field(ge=1)
    reason: str
    will_retry: bool
    next_attempt_at: datetime | None = None
    confirmed: int = 0


@CATALOGUE.register
class NotificationSent(JobFact):
    """One channel of a notification job ("webhook", "email:<address>") accepted it."""

    TYPE = "NotificationSent"
    channel: str
    trigger: str
    attempt: int = Field(default=1, ge=1)


@CATALOGUE.register
class NotificationFailed(JobFact):
    """One channel of a notification job failed; `will_retry` says whether it is tried again."""

    TYPE = "NotificationFailed"
    channel: str
    trigger: str
    reason: str
    will_retry: bool
    attempt: int = Field(default=1, ge=1)
    next_attempt_at: datetime | None = None


@CATALOGUE.register
class BlobsPurged(StudyFact):
    """The cleaner deleted a series' blobs (its instances and the outputs of its jobs).

    A series with this fact cannot be reprocessed: its bytes are gone. `completion_ids` are the
    completions whose blobs went; `reason` is "retention" or "emergency" (disk past its
    watermark, retention and the off-peak window not waited for).
    """

    TYPE = "BlobsPurged"
    series_uid: str
    blob_count: int
    bytes_freed: int
    reason: Literal["retention", "emergency"] = "retention"
    completion_ids: list[str] = Field(default_factory=list)


# --- query jobs (retrieving studies from a source) ---------------------------------------------


class QueryFact(JobFact):
    """A fact about a query job; `run` counts the job's runs (1, then one more per retry)."""

    run: int = Field(default=1, ge=1)


@CATALOGUE.register
class QueryJobSubmitted(QueryFact):
    """Staff asked for the studies of these accession numbers from a source."""

    TYPE = "QueryJobSubmitted"
    source: str
    accessions: list[str] = Field(min_length=1)
    study_description: str = ""
    series_description: str = ""
    forced_rule: str = ""
    lane: Lane = Lane.NORMAL
    destination: str = Field(
        default="", description="A folder target to write to instead of Talaria's intake."
    )


@CATALOGUE.register
class AccessionFound(QueryFact):
    """The source holds these series for the accession (after the description filters)."""

    TYPE = "AccessionFound"
    accession: str
    study_uids: list[str]
    series_count: int = Field(ge=0)
    instance_count: int | None = Field(default=None, description="As the source counts them.")


@CATALOGUE.register
class AccessionNotFound(QueryFact):
    TYPE = "AccessionNotFound"
    accession: str


@CATALOGUE.register
class AccessionRetrieved(QueryFact):
    """Every instance the source holds for the accession went through the intake."""

    TYPE = "AccessionRetrieved"
    accession: str
    study_uids: list[str]
    instances: int = Field(ge=0)
    bytes: int = Field(ge=0)


@CATALOGUE.register
class AccessionFailed(QueryFact):
    """Finding or retrieving an accession failed; `will_retry` says whether it is tried again."""

    TYPE = "AccessionFailed"
    accession: str
    attempt: int = Field(ge=1)
    reason: str
    will_retry: bool
    next_attempt_at: datetime | None = None


@CATALOGUE.register
class QueryJobPaused(QueryFact):
    """An operator paused the job: no further accession is started until it is resumed."""

    TYPE = "QueryJobPaused"


@CATALOGUE.register
class QueryJobResumed(QueryFact):
    TYPE = "QueryJobResumed"


@CATALOGUE.register
class QueryJobCompleted(QueryFact):
    """Every accession of the run was retrieved, not found, or failed for good."""

    TYPE = "QueryJobCompleted"
    retrieved: int = Field(ge=0)
    not_found: int = Field(ge=0)
    failed: int = Field(ge=0)


# --- configuration (forever) ----------------------------------------------------------------------


@CATALOGUE.register
class RuleSaved(ConfigChanged):
    TYPE = "RuleSaved"


@CATALOGUE.register
class RuleDeleted(ConfigChanged):
    TYPE = "RuleDeleted"


@CATALOGUE.register
class TargetSaved(ConfigChanged):
    TYPE = "TargetSaved"


@CATALOGUE.register
class TargetDeleted(ConfigChanged):
    TYPE = "TargetDeleted"


@CATALOGUE.register
class ModuleSaved(ConfigChanged):
    TYPE = "ModuleSaved"


@CATALOGUE.register
class ModuleDeleted(ConfigChanged):
    TYPE = "ModuleDeleted"


@CATALOGUE.register
class SettingsSaved(ConfigChanged):
    TYPE = "SettingsSaved"


@CATALOGUE.register
class UserSaved(ConfigChanged):
    TYPE = "UserSaved"


@CATALOGUE.register
class UserDeleted(ConfigChanged):
    TYPE = "UserDeleted"


# --- operator actions (forever) -----------------------------------------------------------------


@CATALOGUE.register
class QueueSuspended(OperatorAction):
    TYPE = "QueueSuspended"
    queue: str


@CATALOGUE.register
class QueueResumed(OperatorAction):
    TYPE = "QueueResumed"
    queue: str


@CATALOGUE.register
class StudyCompletionForced(OperatorAction):
    TYPE = "StudyCompletionForced"
    study_uid: str


@CATALOGUE.register
class JobRetryRequested(OperatorAction):
    TYPE = "JobRetryRequested"
    job_id: str


@CATALOGUE.register
class JobCancelled(OperatorAction):
    TYPE = "JobCancelled"
    job_id: str


@CATALOGUE.register
class ReprocessRequested(OperatorAction):
    TYPE = "ReprocessRequested"
    study_uid: str
    series_uid: str | None = None
    rule: str | None = None


@CATALOGUE.register
class UserLoggedIn(OperatorAction):
    TYPE = "UserLoggedIn"
    username: str
    address: str


@CATALOGUE.register
class LoginFailed(OperatorAction):
    TYPE = "LoginFailed"
    username: str
    address: str


# --- service health (one hour) ----------------------------------------------------------------


@CATALOGUE.register
class ServiceHeartbeat(Payload):
    """A long-running service is alive; published every `interval_s` while it runs.

    `service` is its kind (receiver, streams, dispatcher, processor, notifier, cleaner),
    `instance` which copy (host:pid); `status` a short word on what it is doing.
    """

    TYPE = "ServiceHeartbeat"
    service: str = Field(min_length=1)
    instance: str = Field(min_length=1)
    started_at: datetime
    interval_s: float = Field(gt=0)
    status: str = ""

    def topic(self) -> Topic:
        return Topic.HEARTBEATS

    def partition_key(self) -> str:
        return f"{self.service}:{self.instance}"


# --- commands ------------------------------------------------------------------------------------


class ModuleStep(Value):
    """One module of a processing chain, with its merged settings."""

    module: str
    settings: JsonObject = Field(default_factory=dict)


@CATALOGUE.register
class ProcessSeries(Command):
    """Run a rule's module chain on the inputs, then dispatch to `dispatch_targets`."""

    TYPE = "ProcessSeries"
    KIND = CommandKind.PROCESS
    job_id: str
    attempt: int = Field(default=1, ge=1)
    rule: str
    series_uids: list[str]
    steps: list[ModuleStep]
    inputs: list[BlobReference]
    dispatch_targets: list[str] = Field(default_factory=list)
    retain_input_images: bool = False
    completion_id: str = ""
    tags: Tags = Field(default_factory=dict)


@CATALOGUE.register
class DispatchSeries(RetriableCommand):
    """Send the inputs to one target; `rules` are all the rules that chose this target."""

    TYPE = "DispatchSeries"
    KIND = CommandKind.DISPATCH
    job_id: str
    rule: str
    target: str
    series_uids: list[str]
    inputs: list[BlobReference]
    tags: Tags = Field(default_factory=dict)
    rules: list[str] = Field(default_factory=list)
    completion_id: str = ""


@CATALOGUE.register
class Notify(RetriableCommand):
    """Send a rule's notification for `trigger` ("reception", "completion", ...)."""

    TYPE = "Notify"
    KIND = CommandKind.NOTIFY
    job_id: str
    rule: str
    trigger: str
    details: JsonObject = Field(default_factory=dict)
    series_uids: list[str] = Field(default_factory=list)
    completion_id: str = ""
    tags: Tags = Field(default_factory=dict)
    channels: list[str] = Field(
        default_factory=list, description="A retry: the channels still to send; empty: all."
    )


@CATALOGUE.register
class RunQueryJob(Payload):
    """Find and retrieve the accessions of a query job that are not done yet (run `run`).

    Submitting a job sends run 1; resuming sends the same run again; retrying sends the next
    run, in which accessions that failed or were not found are tried again.
    """

    TYPE = "RunQueryJob"
    KIND: ClassVar[CommandKind] = CommandKind.QUERY
    job_id: str
    run: int = Field(default=1, ge=1)
    lane: Lane = Lane.NORMAL
    submitted_at: datetime

    def topic(self) -> Topic:
        return command_topic(self.KIND, self.lane)

    def partition_key(self) -> str:
        return self.job_id
