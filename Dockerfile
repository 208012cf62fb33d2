# The image the KubeRay manifests run (`sekisho cluster render --kuberay DIR`: every
# pod's image is the inventory's kubernetes.image). Sekisho and every pinned
# dependency come from an offline bundle; the build uses no network.
#
#   sekisho bundle build --gpu --out /media/sekisho-bundle    # connected staging machine
#   sekisho bundle verify /media/sekisho-bundle               # after carrying it across
#   docker build --network=none -f Dockerfile \
#       --build-arg BASE=registry.internal:5000/library/python:3.11-slim-bookworm \
#       -t registry.internal:5000/sekisho/sekisho:0.1.0 /media/sekisho-bundle
#   docker push registry.internal:5000/sekisho/sekisho:0.1.0
#
# The build context is the bundle folder. BASE is a Python 3.11 image (the bundle's
# target: Linux x86_64, CPython 3.11) mirrored in the internal registry; CUDA comes
# from the bundle's NVIDIA wheels and the driver from the node (NVIDIA container
# toolkit), so the base needs no CUDA of its own.

ARG BASE=registry.internal:5000/library/python:3.11-slim-bookworm

FROM ${BASE} AS install
ENV PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /opt/sekisho-bundle
WORKDIR /opt/sekisho-bundle
# Every file against SHA256SUMS, then only the locked wheels with their hashes (the lock is the
# whole resolved set: --no-deps, so what a cpu bundle leaves out on purpose is not asked for).
RUN sha256sum --check --quiet SHA256SUMS
RUN python3.11 -m venv /opt/sekisho/venv \
 && /opt/sekisho/venv/bin/pip install --no-index --find-links /opt/sekisho-bundle/wheels \
        --no-deps --require-hashes -r /opt/sekisho-bundle/requirements.lock
# The bundle's own check (licences, lock against wheels, target) with the Sekisho just installed.
RUN /opt/sekisho/venv/bin/sekisho bundle verify /opt/sekisho-bundle

FROM ${BASE}
COPY --from=install /opt/sekisho/venv /opt/sekisho/venv
# The egress hook first on PYTHONPATH: the Ray dashboard must not ask cloud metadata
# servers where it runs (cluster/node_env.py; the KubeRay renderer cannot set it).
ENV PATH=/opt/sekisho/venv/bin:$PATH \
    PYTHONPATH=/opt/sekisho/venv/lib/python3.11/site-packages/cluster/egress_hook \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# KubeRay starts Ray with `bash -lc`, whose /etc/profile resets PATH: put the venv back.
RUN test -f /opt/sekisho/venv/lib/python3.11/site-packages/cluster/egress_hook/sitecustomize.py \
 && echo 'export PATH=/opt/sekisho/venv/bin:$PATH' > /etc/profile.d/sekisho.sh \
 && useradd --create-home --uid 1000 sekisho
USER sekisho
WORKDIR /home/sekisho
