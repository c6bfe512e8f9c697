//! template.yaml keeps its promises: least privilege, the `$default` route,
//! throttling from the parameters, reserved concurrency only when asked for, a
//! time budget inside API Gateway's, and mutual TLS under its condition, all
//! three of its parameters or none.
//! samconfig.toml chooses the architecture once, for build and deploy.
// A test unwraps and prints: its failure, and what it saw, are its answer.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;

use mqtt_http_publish::replies::sigv4::IotMqtt;
use yaml_rust2::{Yaml, YamlLoader};

fn template_text() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/template.yaml")).unwrap()
}

fn template() -> Yaml {
    YamlLoader::load_from_str(&template_text()).unwrap().remove(0)
}

fn resource<'a>(t: &'a Yaml, name: &str) -> &'a Yaml {
    let r = &t["Resources"][name];
    assert!(!r.is_badvalue(), "resource {name} is missing");
    r
}

/// Every IAM action string anywhere under `node`.
fn actions(node: &Yaml, out: &mut Vec<String>) {
    match node {
        Yaml::Hash(map) => {
            for (k, v) in map {
                if k.as_str() == Some("Action") {
                    match v {
                        Yaml::String(a) => out.push(a.clone()),
                        Yaml::Array(list) => out.extend(list.iter().filter_map(|a| a.as_str().map(str::to_owned))),
                        _ => {}
                    }
                }
                actions(v, out);
            }
        }
        Yaml::Array(list) => list.iter().for_each(|v| actions(v, out)),
        _ => {}
    }
}

#[test]
fn no_action_is_a_wildcard() {
    let mut found = Vec::new();
    actions(&template(), &mut found);
    assert!(!found.is_empty());
    assert!(found.iter().all(|a| !a.contains('*')), "{found:?}");
    let mut sorted = found.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "dynamodb:DeleteItem",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:Query",
            "dynamodb:UpdateItem",
            "iot:Connect",
            "iot:DescribeEndpoint",
            "iot:Publish",
            "iot:Receive",
            "iot:RetainPublish",
            "iot:Subscribe"
        ]
    );
}

#[test]
fn the_function_writes_only_idempotency_records_which_expire() {
    let t = template();
    let statements = resource(&t, "PublishFunction")["Properties"]["Policies"][0]["Statement"].as_vec().unwrap();
    let writes = statements.iter().find(|s| s["Sid"].as_str() == Some("WriteIdempotencyKeysOnly")).unwrap();
    let actions: Vec<_> = writes["Action"].as_vec().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(actions, ["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]);
    assert_eq!(writes["Resource"]["Fn::GetAtt"][0].as_str(), Some("ConfigTable"));
    let leading = &writes["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
    let prefix = format!("{}*", mqtt_http_publish::idempotency::PARTITION_PREFIX);
    assert_eq!(leading.as_vec().unwrap().iter().map(|k| k.as_str().unwrap()).collect::<Vec<_>>(), [prefix.as_str()]);
    let ttl = &resource(&t, "ConfigTable")["Properties"]["TimeToLiveSpecification"];
    assert_eq!((ttl["AttributeName"].as_str(), ttl["Enabled"].as_bool()), (Some("expires_at"), Some(true)));
    for statement in statements.iter().filter(|s| s["Sid"].as_str() != Some("WriteIdempotencyKeysOnly")) {
        let actions = format!("{:?}", statement["Action"]);
        assert!(!["PutItem", "UpdateItem", "DeleteItem"].iter().any(|a| actions.contains(a)), "{actions}");
    }
}

#[test]
fn iot_publishing_is_scoped_to_the_topic_prefix_and_dynamodb_to_the_table() {
    let t = template();
    let statements =
        resource(&t, "PublishFunction")["Properties"]["Policies"][0]["Statement"].as_vec().unwrap().clone();
    let iot = statements.iter().find(|s| s["Action"][0].as_str() == Some("iot:Publish")).unwrap();
    assert_eq!(
        iot["Resource"]["Fn::Sub"].as_str(),
        Some("arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}:topic/${TopicPrefix}*")
    );
    let dynamodb = statements.iter().find(|s| s["Action"][0].as_str() == Some("dynamodb:GetItem")).unwrap();
    assert_eq!(dynamodb["Resource"]["Fn::GetAtt"][0].as_str(), Some("ConfigTable"));
    assert_eq!(t["Parameters"]["TopicPrefix"]["Default"].as_str(), Some(""));
}

#[test]
fn waiting_for_replies_may_connect_as_the_function_and_receive_only_under_replies_or_the_prefix() {
    let t = template();
    let statements = resource(&t, "PublishFunction")["Properties"]["Policies"][0]["Statement"].as_vec().unwrap();
    let by_sid = |sid: &str| statements.iter().find(|s| s["Sid"].as_str() == Some(sid)).unwrap();
    let arn = "arn:${AWS::Partition}:iot:${AWS::Region}:${AWS::AccountId}";
    let function_name = resource(&t, "PublishFunction")["Properties"]["FunctionName"]["Fn::Sub"].as_str().unwrap();
    assert_eq!(
        by_sid("ConnectToWaitForReplies")["Resource"]["Fn::Sub"].as_str().unwrap(),
        format!("{arn}:client/{function_name}-*"),
        "the client id is the function's name and a suffix (IotMqtt::client_id)"
    );
    assert!(IotMqtt::client_id(Some("stack-publish")).starts_with("stack-publish-"));
    for (sid, kind) in [("SubscribeToResponseTopics", "topicfilter"), ("ReceiveReplies", "topic")] {
        let resources = by_sid(sid)["Resource"].as_vec().unwrap();
        assert_eq!(resources[0]["Fn::Sub"].as_str().unwrap(), format!("{arn}:{kind}/replies/*"));
        let prefixed = &resources[1]["Fn::If"];
        assert_eq!(prefixed[0].as_str(), Some("HasTopicPrefix"), "an empty prefix would grant every topic");
        assert_eq!(prefixed[1]["Fn::Sub"].as_str().unwrap(), format!("{arn}:{kind}/${{TopicPrefix}}*"));
    }
    assert_eq!(
        format!("{}/", mqtt_http_publish::service::DEFAULT_REPLY_TOPIC_ROOT),
        "replies/",
        "the default response topic is under the granted tree"
    );
}

#[test]
fn the_endpoint_lookup_is_allowed_only_when_no_endpoint_is_given() {
    let t = template();
    let statements = resource(&t, "PublishFunction")["Properties"]["Policies"][0]["Statement"].as_vec().unwrap();
    let conditional: Vec<_> = statements.iter().filter(|s| !s["Fn::If"].is_badvalue()).collect();
    assert_eq!(conditional.len(), 1, "one conditional statement: {conditional:?}");
    let branches = &conditional[0]["Fn::If"];
    assert_eq!(branches[0].as_str(), Some("HasIotDataEndpoint"));
    assert_eq!(
        branches[1]["Ref"].as_str(),
        Some("AWS::NoValue"),
        "with an endpoint given, no lookup and no permission"
    );
    let lookup = &branches[2];
    assert_eq!(lookup["Sid"].as_str(), Some("FindTheAccountsIotDataEndpoint"));
    assert_eq!(lookup["Effect"].as_str(), Some("Allow"));
    let actions: Vec<_> = lookup["Action"].as_vec().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(actions, ["iot:DescribeEndpoint"], "the only action on every resource");
    // DescribeEndpoint takes no resource-level permissions: "*" is its only resource.
    assert_eq!(lookup["Resource"].as_str(), Some("*"));
    for s in statements.iter().filter(|s| s["Fn::If"].is_badvalue()) {
        assert_ne!(s["Resource"].as_str(), Some("*"), "only the endpoint lookup names every resource: {s:?}");
    }
    let equals = &t["Conditions"]["HasIotDataEndpoint"]["Fn::Not"][0]["Fn::Equals"];
    assert_eq!((equals[0]["Ref"].as_str(), equals[1].as_str()), (Some("IotDataEndpoint"), Some("")));
    assert_eq!(t["Parameters"]["IotDataEndpoint"]["Default"].as_str(), Some(""), "a default deploy looks it up");
}

#[test]
fn the_function_is_built_and_run_as_promised() {
    let t = template();
    let f = resource(&t, "PublishFunction");
    assert_eq!(f["Metadata"]["BuildMethod"].as_str(), Some("rust-cargolambda"));
    assert_eq!(f["Metadata"]["BuildProperties"]["Binary"].as_str(), Some("mqtt-http-publish"));
    let p = &f["Properties"];
    assert_eq!((p["Runtime"].as_str(), p["Handler"].as_str()), (Some("provided.al2023"), Some("bootstrap")));
    assert_eq!(p["Architectures"][0]["Ref"].as_str(), Some("Architecture"));
    assert_eq!(t["Parameters"]["Architecture"]["Default"].as_str(), Some("arm64"));
    // The cheapest size at a realistic share of argon2id checks (docs/aws.md: "A user's first request in a container").
    assert_eq!(p["MemorySize"].as_i64(), Some(128));
    let timeout_s = p["Timeout"].as_i64().unwrap();
    let publish_ms: i64 = p["Environment"]["Variables"]["PUBLISH_TIMEOUT_MS"].as_str().unwrap().parse().unwrap();
    assert!(
        timeout_s * 1000 > publish_ms && timeout_s < 29,
        "the function outlives a publish, inside API Gateway's 29 s"
    );
    assert_eq!(p["Environment"]["Variables"]["CONFIG_TABLE"]["Fn::If"][2]["Ref"].as_str(), Some("ConfigTable"));
    assert_eq!(p["LoggingConfig"]["LogGroup"]["Ref"].as_str(), Some("PublishLogGroup"));
    assert_eq!(
        resource(&t, "PublishLogGroup")["Properties"]["RetentionInDays"]["Ref"].as_str(),
        Some("LogRetentionDays")
    );
}

#[test]
fn the_function_answers_before_api_gateway_gives_up() {
    let t = template();
    let p = &resource(&t, "PublishFunction")["Properties"];
    let timeout_ms = p["Timeout"].as_i64().unwrap() * 1000;
    let publish_ms: i64 = p["Environment"]["Variables"]["PUBLISH_TIMEOUT_MS"].as_str().unwrap().parse().unwrap();
    assert_eq!(publish_ms, 9000, "2 attempts of 4 s, 9 s in all");
    // The longest chain of bounded calls: the rules Query (4 s), the user's GetItem (4 s),
    // the endpoint lookup (4 s, src/publish/iot.rs), the publish.
    let worst_chain_ms = 4000 + 4000 + 4000 + publish_ms;
    assert!(
        timeout_ms - worst_chain_ms >= 2000,
        "{timeout_ms} ms leaves room after the worst chain ({worst_chain_ms} ms) for an argon2id check and the 500 ms margin"
    );
    assert!(timeout_ms <= 28_000, "the function's own 503 comes before a REST API's 29 s and an HTTP API's 30 s");
}

#[test]
fn every_method_and_path_reaches_the_function_through_the_default_route() {
    let t = template();
    let event = &resource(&t, "PublishFunction")["Properties"]["Events"]["AllRequests"];
    assert_eq!(event["Type"].as_str(), Some("HttpApi"));
    assert_eq!(event["Properties"]["ApiId"]["Ref"].as_str(), Some("HttpApi"));
    // SAM makes the $default route of an HttpApi event that names no Path and no Method.
    assert!(event["Properties"]["Path"].is_badvalue() && event["Properties"]["Method"].is_badvalue());
}

#[test]
fn throttling_is_wired_to_the_parameters() {
    let t = template();
    let settings = &resource(&t, "HttpApi")["Properties"]["DefaultRouteSettings"];
    assert_eq!(settings["ThrottlingRateLimit"]["Ref"].as_str(), Some("ThrottlingRateLimit"));
    assert_eq!(settings["ThrottlingBurstLimit"]["Ref"].as_str(), Some("ThrottlingBurstLimit"));
}

#[test]
fn reserved_concurrency_is_set_only_when_the_parameter_is_given() {
    let t = template();
    let parameter = &t["Parameters"]["ReservedConcurrency"];
    assert_eq!(parameter["Type"].as_str(), Some("String"), "a String, so that empty can mean none");
    assert_eq!(parameter["Default"].as_str(), Some(""), "a default deploy reserves nothing and caps nothing");
    // Empty, or a whole number from 1 up: 0 would throttle every request.
    assert_eq!(parameter["AllowedPattern"].as_str(), Some("^$|^[1-9][0-9]*$"));
    let branches = &resource(&t, "PublishFunction")["Properties"]["ReservedConcurrentExecutions"]["Fn::If"];
    assert_eq!(branches[0].as_str(), Some("HasReservedConcurrency"), "{branches:?}");
    assert_eq!(branches[1]["Ref"].as_str(), Some("ReservedConcurrency"));
    assert_eq!(branches[2]["Ref"].as_str(), Some("AWS::NoValue"), "empty leaves the property out");
    let condition = &t["Conditions"]["HasReservedConcurrency"];
    assert!(!holds(condition, &HashMap::from([("ReservedConcurrency", "")])), "empty: no reserved concurrency");
    assert!(holds(condition, &HashMap::from([("ReservedConcurrency", "100")])), "100: reserved and capped at 100");
}

#[test]
fn the_config_table_is_on_demand_with_point_in_time_recovery() {
    let t = template();
    let p = &resource(&t, "ConfigTable")["Properties"];
    assert_eq!(p["BillingMode"].as_str(), Some("PAY_PER_REQUEST"));
    assert_eq!(p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(), Some(true));
    let keys: Vec<_> = p["KeySchema"].as_vec().unwrap().iter().map(|k| k["AttributeName"].as_str().unwrap()).collect();
    assert_eq!(keys, ["pk", "sk"], "the schema src/config/table.rs reads");
}

#[test]
fn mutual_tls_pieces_exist_under_their_condition_and_close_the_default_endpoint() {
    let t = template();
    let condition = &t["Conditions"]["UseMutualTls"]["Fn::And"];
    assert_eq!(condition.as_vec().map(Vec::len), Some(3), "domain, certificate and truststore are all required");
    let domain = resource(&t, "MutualTlsDomain");
    assert_eq!(domain["Condition"].as_str(), Some("UseMutualTls"));
    assert_eq!(domain["Type"].as_str(), Some("AWS::ApiGatewayV2::DomainName"));
    assert_eq!(domain["Properties"]["MutualTlsAuthentication"]["TruststoreUri"]["Ref"].as_str(), Some("TruststoreUri"));
    assert_eq!(
        domain["Properties"]["DomainNameConfigurations"][0]["CertificateArn"]["Ref"].as_str(),
        Some("CertificateArn")
    );
    let mapping = resource(&t, "MutualTlsMapping");
    assert_eq!(mapping["Condition"].as_str(), Some("UseMutualTls"));
    assert_eq!(mapping["Properties"]["ApiId"]["Ref"].as_str(), Some("HttpApi"));
    let disable = &resource(&t, "HttpApi")["Properties"]["DisableExecuteApiEndpoint"]["Fn::If"];
    assert_eq!(
        (disable[0].as_str(), disable[1].as_bool(), disable[2].as_bool()),
        (Some("UseMutualTls"), Some(true), Some(false))
    );
}

/// Evaluates a `Rules` assertion for the given parameter values. Only the functions
/// the template uses are known; any other fails the test.
fn holds(node: &Yaml, params: &HashMap<&str, &str>) -> bool {
    let function = node.as_hash().unwrap_or_else(|| panic!("not a function: {node:?}"));
    assert_eq!(function.len(), 1, "{node:?}");
    let (name, args) = function.iter().next().unwrap();
    match name.as_str().unwrap() {
        "Fn::Or" => args.as_vec().unwrap().iter().any(|a| holds(a, params)),
        "Fn::And" => args.as_vec().unwrap().iter().all(|a| holds(a, params)),
        "Fn::Not" => !holds(&args[0], params),
        "Fn::Equals" => value(&args[0], params) == value(&args[1], params),
        other => panic!("{other} in a rule"),
    }
}

fn value(node: &Yaml, params: &HashMap<&str, &str>) -> String {
    match node["Ref"].as_str() {
        Some(name) => params.get(name).unwrap_or_else(|| panic!("{name} is not a parameter here")).to_string(),
        None => node.as_str().unwrap_or_else(|| panic!("not a string: {node:?}")).to_owned(),
    }
}

#[test]
fn mutual_tls_parameters_are_all_given_or_none_else_the_deploy_fails() {
    let t = template();
    let mut assertions = Vec::new();
    for (name, rule) in t["Rules"].as_hash().expect("a Rules section") {
        assert!(rule["RuleCondition"].is_badvalue(), "{name:?} applies to every deploy");
        for assertion in rule["Assertions"].as_vec().unwrap() {
            assert!(assertion["AssertDescription"].as_str().is_some(), "{name:?} says what is wrong");
            assertions.push(&assertion["Assert"]);
        }
    }
    let three = ["CustomDomainName", "CertificateArn", "TruststoreUri"];
    let options = ["TruststoreVersion", "OwnershipVerificationCertificateArn"];
    for mask in 0..8 {
        let mut params: HashMap<&str, &str> = three.iter().chain(&options).map(|p| (*p, "")).collect();
        for (i, name) in three.iter().enumerate() {
            if mask & (1 << i) != 0 {
                params.insert(*name, "given");
            }
        }
        let accepted = assertions.iter().all(|a| holds(a, &params));
        assert_eq!(accepted, mask == 0 || mask == 7, "{params:?}");
        // The two options mean nothing without mutual TLS, so they are refused without it.
        for option in options {
            let mut with_option = params.clone();
            with_option.insert(option, "given");
            assert_eq!(assertions.iter().all(|a| holds(a, &with_option)), mask == 7, "{with_option:?}");
        }
    }
}

#[test]
fn the_mutual_tls_options_reach_the_domain_under_their_conditions() {
    let t = template();
    let p = &resource(&t, "MutualTlsDomain")["Properties"];
    let wired = [
        (
            &p["DomainNameConfigurations"][0]["OwnershipVerificationCertificateArn"]["Fn::If"],
            "HasOwnershipVerificationCertificate",
            "OwnershipVerificationCertificateArn",
        ),
        (&p["MutualTlsAuthentication"]["TruststoreVersion"]["Fn::If"], "HasTruststoreVersion", "TruststoreVersion"),
    ];
    for (branches, condition, parameter) in wired {
        assert_eq!(branches[0].as_str(), Some(condition), "{parameter}");
        assert_eq!(branches[1]["Ref"].as_str(), Some(parameter));
        assert_eq!(branches[2]["Ref"].as_str(), Some("AWS::NoValue"), "{parameter} left out when empty");
        let equals = &t["Conditions"][condition]["Fn::Not"][0]["Fn::Equals"];
        assert_eq!((equals[0]["Ref"].as_str(), equals[1].as_str()), (Some(parameter), Some("")));
        assert_eq!(t["Parameters"][parameter]["Default"].as_str(), Some(""), "{parameter} is optional");
    }
}

#[test]
fn the_outputs_give_the_url_the_table_and_a_curl_line() {
    let t = template();
    for output in ["ApiUrl", "ConfigTableName", "CurlExample"] {
        assert!(!t["Outputs"][output]["Value"].is_badvalue(), "{output}");
    }
}

#[test]
fn the_outputs_give_the_domains_regional_target_for_its_dns_record() {
    let t = template();
    for attribute in ["RegionalDomainName", "RegionalHostedZoneId"] {
        let output = &t["Outputs"][attribute];
        assert_eq!(output["Condition"].as_str(), Some("UseMutualTls"), "{attribute}");
        let get = &output["Value"]["Fn::GetAtt"];
        assert_eq!((get[0].as_str(), get[1].as_str()), (Some("MutualTlsDomain"), Some(attribute)));
    }
}

#[test]
fn the_curl_example_carries_no_demo_password() {
    let t = template();
    let curl = &t["Outputs"]["CurlExample"]["Value"]["Fn::If"];
    let basic = curl[2]["Fn::Sub"].as_str().unwrap();
    assert!(basic.contains("-u USER:PASSWORD"), "{basic}");
    for demo in ["dXNlcjA6c2VjcmV0MA==", "secret0"] {
        assert!(!format!("{curl:?}").contains(demo), "the CurlExample output shows {demo}");
        assert!(!template_text().contains(demo), "template.yaml mentions {demo}");
    }
}

#[test]
fn samconfig_chooses_the_architecture_once_for_build_and_deploy() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/samconfig.toml")).unwrap();
    let config: toml::Table = text.parse().unwrap();
    let default = &config["default"];
    let global = &default["global"]["parameters"];
    assert_eq!(global["stack_name"].as_str(), Some("mqtt-http-publish"));
    let overrides = global["parameter_overrides"].as_str().unwrap();
    let architecture = overrides
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("Architecture="))
        .expect("the global section, which build and deploy both read, names the architecture");
    let t = template();
    let allowed = t["Parameters"]["Architecture"]["AllowedValues"].as_vec().unwrap();
    assert!(allowed.iter().any(|v| v.as_str() == Some(architecture)), "{architecture}");
    for command in ["build", "deploy"] {
        let own = default.get(command).and_then(|c| c.get("parameters")).and_then(|p| p.get("parameter_overrides"));
        assert!(own.is_none(), "{command} would choose its own architecture");
    }
    let deploy = &default["deploy"]["parameters"];
    assert_eq!(deploy["capabilities"].as_str(), Some("CAPABILITY_IAM"));
    assert_eq!(deploy["confirm_changeset"].as_bool(), Some(true));
    assert_eq!(deploy["resolve_s3"].as_bool(), Some(true));
    assert!(deploy.get("region").is_none() && global.get("region").is_none(), "the region is the user's");
}

#[test]
fn the_function_is_built_without_the_serve_feature_and_cargo_run_with_it() {
    // sam build's rust-cargolambda passes no cargo features: cargo-lambda reads them from Cargo.toml.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    let lambda_build = &manifest["package"]["metadata"]["lambda"]["build"];
    assert_eq!(lambda_build["no_default_features"].as_bool(), Some(true), "{lambda_build:?}");
    assert!(lambda_build.get("features").is_none(), "no feature is turned back on: {lambda_build:?}");
    // SAM passes --arm64 for arm64 and nothing for x86_64: x86_64 must not mean "the build host's".
    assert_eq!(lambda_build["x86_64"].as_bool(), Some(true), "{lambda_build:?}");
    let default = manifest["features"]["default"].as_array().unwrap();
    assert!(default.iter().any(|f| f.as_str() == Some("serve")), "`cargo run -- serve` works out of the box");
    for dependency in ["rumqttd", "tokio-rustls", "x509-parser", "tracing-appender"] {
        let optional = manifest["dependencies"][dependency].get("optional").and_then(|o| o.as_bool());
        assert_eq!(optional, Some(true), "{dependency} is serve's alone");
    }
    // The function waits for replies over MQTT too (a WebSocket to AWS IoT): rumqttc is in both builds.
    let rumqttc = &manifest["dependencies"]["rumqttc"];
    assert!(rumqttc.get("optional").is_none(), "{rumqttc:?}");
    assert!(rumqttc["features"].as_array().unwrap().iter().any(|f| f.as_str() == Some("websocket")));
}
