"""Build every test module image now (see the package's docstring), e.g. before the suite
enters a network namespace without the Debian mirror."""

from tests.executors.images import busybox_module_image, docker_client, tag_module_image

client = docker_client()
for image in (busybox_module_image(client), tag_module_image(client)):
    print(f"test image ready: {image}")
