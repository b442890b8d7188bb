"""The processor: runs `ProcessSeries` jobs from the processing lanes, and retries on request.

One job, one attempt: record the command, publish `ProcessingStarted`, decide every step's
container (the policy refuses before anything runs), materialise the inputs, run the chain (each
step's output is the next step's input; the first failure stops it), store the outputs, then
publish the last `ProcessingStepCompleted` with the outputs and the follow-up commands, or
`ProcessingFailed`. Each group of events goes through the job's journal, so a command redelivered
after a crash finishes the job once. `JobRetryRequested` on the operations topic re-issues a
failed job's first command, with the next attempt number and today's module settings, in its
original lane.
"""

import shutil
import socket
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import structlog

from executors.lanes import OffPeakWindow, PriorityGate, lane_consumers, operations_consumer
from executors.processing import ContainerGone, JobFailed
from executors.processing.journal import OUTCOME, JobJournal
from executors.processing.policy import Policy, StepPlace, container_spec
from executors.processing.runtime import ContainerSpec, DockerRuntime, ModuleRuntime
from executors.processing.settings import ProcessorSettings
from executors.processing.task import (
    TaskContext,
    current_steps,
    failure_notice,
    follow_ups,
    task_document,
)
from executors.processing.workdir import (
    Workdir,
    advance,
    collect_outputs,
    output_files,
    prepare_workdir,
    read_result,
    write_task_file,
)
from executors.service import ExecutorService
from infra.blobstore import BlobStore
from infra.catalogue import (
    JobRetryRequested,
    ProcessingFailed,
    ProcessingStarted,
    ProcessingStepCompleted,
    ProcessSeries,
)
from infra.events import Envelope, Payload
from infra.log import ConsumerLoop, EventProducer
from infra.topics import CommandKind
from streams.config import Configuration
from streams.view import ConfigView

log = structlog.get_logger(__name__)
GROUP = "processor"
SOURCE = "processor"


class Processor:
    """Handles processing commands and retry requests."""

    def __init__(
        self,
        settings: ProcessorSettings,
        *,
        producer: EventProducer,
        blobs: BlobStore,
        runtime: ModuleRuntime,
        view: ConfigView,
    ) -> None:
        self._producer = producer
        self._blobs = blobs
        self._runtime = runtime
        self._view = view
        self._policy = Policy.from_settings(settings)
        self._appliance = settings.appliance_name
        self._work_root = settings.work_root
        self._source = f"{SOURCE}@{socket.gethostname()}"

    def handle_command(self, envelope: Envelope) -> None:
        if isinstance(envelope.payload, ProcessSeries):
            self.run_job(envelope, envelope.payload)

    def handle_operation(self, envelope: Envelope) -> None:
        if isinstance(envelope.payload, JobRetryRequested):
            self._view.catch_up()  # a rule fixed just before the retry must count
            self.request_retry(envelope, envelope.payload)

    def run_job(self, envelope: Envelope, command: ProcessSeries) -> None:
        """Run one attempt of a job, unless it already finished."""
        journal = JobJournal(self._blobs, command.job_id)
        job_log = log.bind(
            job_id=command.job_id,
            attempt=command.attempt,
            rule=command.rule,
            study_uid=command.study_uid,
            series_uids=command.series_uids,
        )
        if journal.is_published(command.attempt, OUTCOME):
            job_log.info("job attempt already finished; redelivered command ignored")
            return
        journal.record_command(command)
        config = self._view.config
        started = ProcessingStarted(
            job_id=command.job_id,
            rule=command.rule,
            modules=[step.module for step in command.steps],
            attempt=command.attempt,
        )
        self._publish(journal, envelope, command, name="started", payloads=[started])
        job_log.info("job started", modules=started.modules)
        try:
            outcome = self._run_chain(envelope, command, journal=journal, config=config)
        except ContainerGone as gone:
            job_log.warning("job taken over by another processor", reason=str(gone))
            return
        self._publish(journal, envelope, command, name=OUTCOME, payloads=outcome)
        job_log.info("job finished", outcome=[payload.TYPE for payload in outcome])

    def request_retry(self, envelope: Envelope, request: JobRetryRequested) -> None:
        """Re-issue a failed job's command as its next attempt, with today's settings."""
        journal = JobJournal(self._blobs, request.job_id)
        original = journal.command()
        if original is None:
            return  # not a processing job
        latest = journal.latest_attempt()
        if not journal.failed(latest):
            log.info("retry ignored: the last attempt did not fail", job_id=request.job_id)
            return
        retry = original.model_copy(
            update={"attempt": latest + 1, "steps": current_steps(original, self._view.config)}
        )
        journal.publish_once(
            self._producer,
            [envelope.caused(retry, source=self._source, subject=request.job_id)],
            attempt=None,
            name=f"retry-{envelope.event_id}",
        )
        log.info("retry issued", job_id=request.job_id, attempt=retry.attempt)

    def _run_chain(
        self,
        envelope: Envelope,
        command: ProcessSeries,
        *,
        journal: JobJournal,
        config: Configuration,
    ) -> list[Payload]:
        """Every step in order; the payloads of the job's outcome."""
        step: int | None = None
        self._work_root.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f"{command.attempt}-", dir=self._work_root))
        try:
            workdir = Workdir(root / "job")
            specs: list[ContainerSpec] = []
            for step, module_step in enumerate(command.steps):
                place = StepPlace(
                    job_id=command.job_id,
                    attempt=command.attempt,
                    step=step,
                    in_dir=workdir.in_dir,
                    out_dir=workdir.out_dir,
                )
                module = config.modules.get(module_step.module)
                specs.append(
                    container_spec(module_step.module, module, policy=self._policy, place=place)
                )
            step = None
            prepare_workdir(
                workdir.root,
                blobs=self._blobs,
                inputs=command.inputs,
                link=all(spec.user is not None for spec in specs),
            )
            completed: list[ProcessingStepCompleted] = []
            for step, spec in enumerate(specs):
                done = self._run_step(
                    command, step=step, spec=spec, workdir=workdir, journal=journal, config=config
                )
                completed.append(done)
                if done.exit_code != 0:
                    self._publish(journal, envelope, command, name=f"step-{step}", payloads=[done])
                    reason = f"module {done.module!r} exited with code {done.exit_code}"
                    return self._failed(command, reason=reason, step=step, config=config)
                if step < len(specs) - 1:
                    self._publish(journal, envelope, command, name=f"step-{step}", payloads=[done])
                    advance(workdir)
            return self._succeeded(
                command, completed=completed, workdir=workdir, journal=journal, config=config
            )
        except JobFailed as failure:
            return self._failed(command, reason=str(failure), step=step, config=config)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _run_step(
        self,
        command: ProcessSeries,
        *,
        step: int,
        spec: ContainerSpec,
        workdir: Workdir,
        journal: JobJournal,
        config: Configuration,
    ) -> ProcessingStepCompleted:
        """Run one module on the input folder; its logs go to the blob store."""
        module_name = command.steps[step].module
        context = TaskContext(
            appliance=self._appliance, server=socket.gethostname(), now=datetime.now()
        )
        task = task_document(
            command,
            step=step,
            module=config.modules.get(module_name),
            rule=config.rules.get(command.rule),
            context=context,
        )
        write_task_file(workdir, task)
        run = self._runtime.run(spec)
        log_key = journal.log_key(command.attempt, step)
        self._blobs.put(log_key, run.logs)
        return ProcessingStepCompleted(
            job_id=command.job_id,
            step=step,
            module=module_name,
            exit_code=run.exit_code,
            duration_s=round(run.duration_s, 3),
            output_count=len(output_files(workdir)),
            result=read_result(workdir),
            log_key=log_key.path,
        )

    def _succeeded(
        self,
        command: ProcessSeries,
        *,
        completed: Sequence[ProcessingStepCompleted],
        workdir: Workdir,
        journal: JobJournal,
        config: Configuration,
    ) -> list[Payload]:
        """Store the outputs; the last step's event carries them, then the follow-ups."""
        stored = collect_outputs(
            workdir,
            blobs=self._blobs,
            key_for=lambda **uids: journal.output_key(command.attempt, **uids),
        )
        retained = command.inputs if command.retain_input_images else []
        retained_series = command.series_uids if command.retain_input_images else []
        outputs = [*stored.blobs, *retained]
        series = list(dict.fromkeys([*stored.series_uids, *retained_series]))
        last = completed[-1].model_copy(update={"outputs": outputs})
        commands = follow_ups(
            command, results=completed, outputs=outputs, output_series=series, config=config
        )
        return [last, *commands]

    def _failed(
        self, command: ProcessSeries, *, reason: str, step: int | None, config: Configuration
    ) -> list[Payload]:
        log.warning("job failed", job_id=command.job_id, step=step, reason=reason)
        failed = ProcessingFailed(job_id=command.job_id, reason=reason, step=step)
        return [failed, *failure_notice(command, reason=reason, config=config)]

    def _publish(
        self,
        journal: JobJournal,
        envelope: Envelope,
        command: ProcessSeries,
        *,
        name: str,
        payloads: Sequence[Payload],
    ) -> None:
        envelopes = [
            envelope.caused(payload, source=self._source, subject=command.job_id)
            for payload in payloads
        ]
        journal.publish_once(self._producer, envelopes, attempt=command.attempt, name=name)


def consumers(
    settings: ProcessorSettings, *, processor: Processor, producer: EventProducer, view: ConfigView
) -> list[ConsumerLoop]:
    """One loop per processing lane (urgent first, off-peak in its window), one for retries.

    The lanes pause while the queue "processing" (or "processing.<lane>") is suspended.
    """
    lanes = lane_consumers(
        settings,
        kind=CommandKind.PROCESS,
        group_id=GROUP,
        handle=processor.handle_command,
        producer=producer,
        gate=PriorityGate(slots=settings.processor_slots),
        window=OffPeakWindow.parse(settings.offpeak_window),
        suspended=lambda lane: bool(
            {"processing", f"processing.{lane.value}"} & view.suspended_queues
        ),
    )
    operations = operations_consumer(
        settings, group_id=GROUP, handle=processor.handle_operation, producer=producer
    )
    return [*lanes, operations]


def processor_service(
    settings: ProcessorSettings, *, runtime: ModuleRuntime | None = None
) -> ExecutorService:
    """A processor with its lanes and operator requests, on the local Docker engine unless
    another `runtime` is given."""

    def build_loops(service: ExecutorService) -> list[ConsumerLoop]:
        processor = Processor(
            settings,
            producer=service.producer,
            blobs=service.store,
            runtime=runtime or DockerRuntime.from_env(),
            view=service.view,
        )
        return consumers(
            settings, processor=processor, producer=service.producer, view=service.view
        )

    return ExecutorService(settings, name=GROUP, build_loops=build_loops)
