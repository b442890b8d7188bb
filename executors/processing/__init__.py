"""Processing: run a rule's chain of mercure-compatible modules in containers on a job's inputs.

The flow of one `ProcessSeries` job (`processor.py`): record the command, publish
`ProcessingStarted`, materialise the inputs with `task.json` and `.tags` files (`workdir.py`),
run each module in a locked-down container (`policy.py` decides the container, `runtime.py` runs
it), store the outputs in the blob store, then publish `ProcessingStepCompleted` per step and
either the follow-up commands (`DispatchSeries`, `Notify`) or `ProcessingFailed`. Every
publication goes through the job's journal in the blob store (`journal.py`), so a redelivered
command after a crash publishes nothing twice.

Errors (retry policy keys off the class)::

    ProcessingError              base of everything raised here
    ├── JobFailed                permanent: this attempt fails; recorded as `ProcessingFailed`
    │   ├── ModuleRefused        the module's configuration breaks the installation's policy
    │   │                        (root, docker arguments or volumes outside the allow-list)
    │   ├── ModuleNotConfigured  no module of that name, or it names no image
    │   ├── ImageUnavailable     the image is neither local nor pullable
    │   ├── ModuleTimedOut       the container ran past the module's time limit and was killed
    │   ├── ModuleCrashed        the engine could not create or start the container
    │   └── OutputInvalid        the module wrote an output that is not a storable DICOM file
    ├── ContainerGone            permanent: the container was removed under us (another
    │                            processor took the job over after a rebalance); nothing to do
    └── RuntimeUnavailable       transient: the Docker engine cannot be reached; the job waits
"""

from infra.errors import PermanentError, TalariaError, TransientError


class ProcessingError(TalariaError):
    """Base of every processing failure."""


class JobFailed(ProcessingError, PermanentError):
    """This attempt of the job fails; the reason is recorded as `ProcessingFailed`."""


class ModuleRefused(JobFailed):
    """The module's configuration breaks the installation's safety policy."""


class ModuleNotConfigured(JobFailed):
    """The configuration has no such module, or the module names no image."""


class ImageUnavailable(JobFailed):
    """The module's image is not on the engine and could not be pulled."""


class ModuleTimedOut(JobFailed):
    """The module ran past its time limit and was killed."""


class ModuleCrashed(JobFailed):
    """The engine could not create or start the container (bad runtime, limits, ...)."""


class OutputInvalid(JobFailed):
    """The module wrote an output that cannot be stored as a DICOM instance."""


class ContainerGone(ProcessingError, PermanentError):
    """The container disappeared while we waited for it: another processor took over."""


class RuntimeUnavailable(ProcessingError, TransientError):
    """The container engine cannot be reached now."""
