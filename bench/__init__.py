"""`make bench`: measures the tool itself, side by side, in one run.

    client   our osmi-client (closed loop, batch 1, small_lstm) against one
             real osmi-model-server: process CPU per request (its summary's
             cpu_s_measured / sent), start-up time and peak RSS;
    raw      a bare grpcio loop in its own process (one channel, the same
             prebuilt request bytes, synchronous unary calls): the floor;
    anchor   an OSMI-style client in its own process (per request a fresh numpy
             array -> tf.make_tensor_proto -> predict_pb2 -> stub.Predict, every
             response kept): what the original tooling costs;
    lb       HAProxy (mode http, proto h2) to 2 servers vs the same clients
             split over the 2 servers directly, plus the backends' shares;
    load     64 clients through the real runner: every request accounted for;
    repro    the same small grid swept twice: no point may disagree;
    generate expanding and writing a 10,000-experiment sweep;
    analyze  recomputing per-run counts and latency percentiles from ~63M raw
             request records (3,840 runs x 16,384 records, synthetic, made once
             under build/bench-data).

Servers and the balancer come up through osmi.fleet, exactly as in a job. Every
figure goes to build/bench.json (atomically); the last stdout line is the same
object as one JSON line; progress goes to stderr. Figures named `cpu` are process
CPU time (time.process_time), never wall time. Every process started here is
stopped on the way out, error or not, and dies with us anyway (PR_SET_PDEATHSIG).

    python -m osmi_ee.bench [--quick] [--parts cpu,lb,...]
"""
