"""A processing job's state from its command and its steps, whichever is folded first."""

from infra.catalogue import ModuleStep, ProcessingStepCompleted, ProcessSeries
from infra.events import Envelope
from projections.fold import At, JobRow, fold_job
from tests.projections.story import event

JOB = "job-process"


def command() -> Envelope:
    return event(
        ProcessSeries(
            study_uid="1.2",
            job_id=JOB,
            rule="ai",
            series_uids=["1.2.3"],
            steps=[ModuleStep(module="a"), ModuleStep(module="b")],
            inputs=[],
        ),
        1,
    )


def step(number: int) -> Envelope:
    completed = ProcessingStepCompleted(
        job_id=JOB, step=number, module="ab"[number], exit_code=0, duration_s=1, output_count=1
    )
    return event(completed, 2 + number)


def states(events: list[tuple[Envelope, At]]) -> list[str]:
    row = JobRow(job_id=JOB)
    seen = []
    for envelope, at in events:
        row = fold_job(row, envelope, at)
        seen.append(row.state)
    return seen


def test_a_chain_succeeds_with_its_last_step_in_either_order_of_topics() -> None:
    commands, jobs = "commands.process.normal/0", "jobs/0"
    in_order = [(command(), At(commands, 0)), (step(0), At(jobs, 0)), (step(1), At(jobs, 1))]
    assert states(in_order) == ["queued", "running", "succeeded"]
    command_last = [(step(0), At(jobs, 0)), (step(1), At(jobs, 1)), (command(), At(commands, 0))]
    assert states(command_last) == ["running", "running", "succeeded"]
