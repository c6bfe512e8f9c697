/*
 * The MQTT client of load/run's load section: what a device fleet's publishes cost the broker
 * without HTTP in between. A C client on libmosquitto (Debian's libmosquitto-dev) publishes what
 * wrk's requests to serve carry (256 bytes, QoS 1, MQTT 5) round-robin over the topics
 * bench/t0..bench/t63, and keeps IN_FLIGHT publishes unacknowledged at all times: each PUBACK
 * sends the next publish, as each 200 lets a wrk connection send its next request.
 *
 *   libmosquitto_publish HOST PORT IN_FLIGHT SECONDS
 *
 *   cc -O2 -o libmosquitto_publish load/libmosquitto_publish.c -lmosquitto
 *
 * Prints one line of NAME VALUE pairs, e.g.
 *
 *   publishes/s 21034.5 p50_ms 2.87 p99_ms 6.41 acknowledged 210345 refused 0 in_flight 64 broker_receive_maximum 20
 *
 * publishes/s counts the PUBACKs that arrived within SECONDS. The latency is from
 * mosquitto_publish_v5() to the PUBACK's callback; it includes the time a publish waits in the
 * client while the broker's Receive Maximum (printed; none means the CONNACK had none) is used
 * up, as an HTTP request to serve waits for a free slot on serve's connection.
 *
 * One thread: mosquitto_loop() reads, calls the callbacks and writes, so the callbacks and the
 * bookkeeping below need no lock.
 */
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOPICS 64
#define PAYLOAD_BYTES 256

/* What the callbacks and main share. */
struct run {
	/* Seconds of the clock (CLOCK_MONOTONIC) when publishing stops: no new publish after it. */
	double end;
	/* When each outstanding publish was handed to libmosquitto, by message id (1..65535). */
	double sent_at[65536];
	/* The latency of each publish acknowledged before `end`, in ms; grows by doubling. */
	double *latencies;
	size_t acknowledged, capacity;
	/* PUBACKs with a reason code of 128 or more (the broker refused the message). */
	size_t refused;
	/* Publishes not yet acknowledged. */
	int outstanding;
	/* The next topic's number, 0..TOPICS-1. */
	int next_topic;
	/* The CONNACK's Receive Maximum, or -1 if it had none; 0 until the CONNACK arrives. */
	int receive_maximum;
	int connected;
	char payload[PAYLOAD_BYTES];
};

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, int rc)
{
	fprintf(stderr, "libmosquitto_publish: %s: %s\n", what, mosquitto_strerror(rc));
	exit(1);
}

static void publish_next(struct mosquitto *mosq, struct run *run)
{
	char topic[32];
	int mid = 0;
	snprintf(topic, sizeof topic, "bench/t%d", run->next_topic);
	run->next_topic = (run->next_topic + 1) % TOPICS;
	double started = now();
	int rc = mosquitto_publish_v5(mosq, &mid, topic, PAYLOAD_BYTES, run->payload, 1, false, NULL);
	if (rc != MOSQ_ERR_SUCCESS)
		die("publish", rc);
	run->sent_at[mid] = started;
	run->outstanding++;
}

static void on_connect(struct mosquitto *mosq, void *obj, int rc, int flags, const mosquitto_property *props)
{
	struct run *run = obj;
	uint16_t receive_maximum;
	(void)mosq;
	(void)flags;
	if (rc != 0) {
		fprintf(stderr, "libmosquitto_publish: connection refused: %s\n", mosquitto_reason_string(rc));
		exit(1);
	}
	run->receive_maximum = mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &receive_maximum, false)
		? receive_maximum : -1;
	run->connected = 1;
}

/* Counts an acknowledged publish and keeps its latency. */
static void record(struct run *run, double latency_ms)
{
	if (run->acknowledged == run->capacity) {
		run->capacity = run->capacity ? run->capacity * 2 : 1 << 16;
		run->latencies = realloc(run->latencies, run->capacity * sizeof *run->latencies);
		if (!run->latencies) {
			perror("libmosquitto_publish: realloc");
			exit(1);
		}
	}
	run->latencies[run->acknowledged++] = latency_ms;
}

static void on_publish(struct mosquitto *mosq, void *obj, int mid, int reason_code, const mosquitto_property *props)
{
	struct run *run = obj;
	double at = now();
	(void)props;
	run->outstanding--;
	if (at >= run->end)
		return; /* after the window: neither counted nor replaced */
	if (reason_code >= 128) {
		run->refused++;
	} else {
		record(run, (at - run->sent_at[mid]) * 1e3);
	}
	publish_next(mosq, run);
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The nearest-rank percentile of sorted values. */
static double percentile(const double *sorted, size_t n, double p)
{
	size_t rank = (size_t)(p * (double)n + 0.999999);
	return n ? sorted[(rank ? rank : 1) - 1] : 0.0;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s HOST PORT IN_FLIGHT SECONDS\n", argv[0]);
		return 2;
	}
	const char *host = argv[1];
	int port = atoi(argv[2]), in_flight = atoi(argv[3]);
	double seconds = atof(argv[4]);
	if (port <= 0 || in_flight <= 0 || in_flight > 65535 || seconds <= 0) {
		fprintf(stderr, "libmosquitto_publish: PORT, IN_FLIGHT (1..65535) and SECONDS must be positive\n");
		return 2;
	}

	static struct run run;
	memset(run.payload, 'x', sizeof run.payload);
	mosquitto_lib_init();
	struct mosquitto *mosq = mosquitto_new(NULL, true, &run);
	if (!mosq) {
		perror("libmosquitto_publish: mosquitto_new");
		return 1;
	}
	int rc = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	if (rc != MOSQ_ERR_SUCCESS)
		die("MQTT 5", rc);
	/* The client's own limit (20 by default) must not be the one that holds IN_FLIGHT back. */
	rc = mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, in_flight);
	if (rc != MOSQ_ERR_SUCCESS)
		die("send maximum", rc);
	mosquitto_connect_v5_callback_set(mosq, on_connect);
	mosquitto_publish_v5_callback_set(mosq, on_publish);
	rc = mosquitto_connect(mosq, host, port, 60);
	if (rc != MOSQ_ERR_SUCCESS)
		die("connect", rc);
	double deadline = now() + 5;
	while (!run.connected) {
		rc = mosquitto_loop(mosq, 100, 1);
		if (rc != MOSQ_ERR_SUCCESS)
			die("waiting for CONNACK", rc);
		if (now() > deadline) {
			fprintf(stderr, "libmosquitto_publish: no CONNACK within 5 s\n");
			return 1;
		}
	}

	double start = now();
	run.end = start + seconds;
	for (int i = 0; i < in_flight; i++)
		publish_next(mosq, &run);
	/* Publish for SECONDS, then wait up to 5 s for the last PUBACKs before disconnecting. */
	while (run.outstanding > 0 && now() < run.end + 5) {
		rc = mosquitto_loop(mosq, 100, 1);
		if (rc != MOSQ_ERR_SUCCESS)
			die("loop", rc);
	}
	mosquitto_disconnect(mosq);
	mosquitto_destroy(mosq);
	mosquitto_lib_cleanup();

	qsort(run.latencies, run.acknowledged, sizeof *run.latencies, by_value);
	printf("publishes/s %.1f p50_ms %.2f p99_ms %.2f acknowledged %zu refused %zu in_flight %d broker_receive_maximum ",
		(double)run.acknowledged / seconds, percentile(run.latencies, run.acknowledged, 0.50),
		percentile(run.latencies, run.acknowledged, 0.99), run.acknowledged, run.refused, in_flight);
	if (run.receive_maximum < 0)
		printf("none\n");
	else
		printf("%d\n", run.receive_maximum);
	free(run.latencies);
	return run.outstanding > 0 ? 1 : 0;
}
