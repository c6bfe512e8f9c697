// Node-RED settings for load/run: Node-RED as a peer of `serve`, answering the same
// POST /topics/{topic}?qos=1 with Basic auth as user0 / secret0 (load/node-red/flows.json).
// load/run starts it as
//   node red.js --settings load/node-red/settings.js --userDir WORK --port PORT WORK/flows.json
// with MQTT_PORT in the environment (the flow's broker node reads ${MQTT_PORT}).
module.exports = {
    uiHost: "127.0.0.1",

    // No editor and no admin API: only the flow's HTTP routes are served.
    httpAdminRoot: false,

    // Basic auth on every `http in` route, Node-RED's own way (red.js, basicAuthMiddleware).
    // `pass` is a bcrypt hash of secret0 (bcryptjs, cost 8, as Node-RED's docs make them).
    // How it is checked: the first request with the right user runs bcrypt.compareSync
    // (bcryptjs, pure JavaScript, about 30 ms here), then the middleware keeps that plaintext
    // and compares each later request's password to it with `===`: no hash per request once
    // the right password has been seen (serve keeps a credential cache too). A wrong password
    // runs bcrypt every time.
    httpNodeAuth: { user: "user0", pass: "$2b$08$5eVKVCaakLwgR20rxNO0aOYq4pAR01I5vtItGSwI/UjW0ziUUzcZe" },

    // The flow holds no credentials; nothing to encrypt.
    credentialSecret: false,

    // Nothing leaves loopback, and nothing but the flow runs.
    telemetry: { enabled: false, updateNotification: false },
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    functionExternalModules: false,
    externalModules: { autoInstall: false, palette: { allowInstall: false } },

    // No per-request log lines (serve logs one per request to a file; Node-RED's http in
    // node has no such line, so this is its quietest, fastest setting).
    logging: { console: { level: "warn", metrics: false, audit: false } },
};
