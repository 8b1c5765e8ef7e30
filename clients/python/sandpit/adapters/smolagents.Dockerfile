# The template SandpitExecutor uses by default: what smolagents' remote
# executors expect in their images (Pillow for images in final answers,
# numpy), in a virtualenv the sandbox's user owns, so the executor's
# additional imports can be pip-installed into it (under a policy with
# network to the package index, e.g. `pypi`). Built once, from PyPI, through
# the build policy's egress proxy:
#   sandpit template build -f clients/python/sandpit/adapters/smolagents.Dockerfile -t smolagents
# (SandpitExecutor builds it itself on first use when it is missing.)
FROM default
# The sandbox's root has no CAP_CHOWN: the user makes the virtualenv itself.
USER root
RUN mkdir -m 0777 /opt/smolagents
USER user
RUN python3 -m venv /opt/smolagents \
 && /opt/smolagents/bin/pip install --no-cache-dir --quiet --disable-pip-version-check pillow numpy
ENV PATH=/opt/smolagents/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV MPLCONFIGDIR=/tmp/matplotlib
