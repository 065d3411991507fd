//! `firestore.rules` names two things the service also names: the user types, and the admin
//! claim. Neither can be read from the service at rule time, so this test keeps them equal.

use token_limits::auth::ADMIN_CLAIM;
use token_limits::usage::UserType;

fn rules() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/firestore.rules");
    std::fs::read_to_string(path).expect("firestore.rules is readable")
}

#[test]
fn the_rules_accept_exactly_the_services_user_types() {
    let rules = rules();
    let marker = "data.userType in [";
    let start = rules
        .find(marker)
        .expect("the rules check userType against a list")
        + marker.len();
    let end = start + rules[start..].find(']').expect("the list is closed");
    let in_rules: Vec<&str> = rules[start..end]
        .split(',')
        .map(|name| name.trim().trim_matches('\''))
        .collect();
    let in_service: Vec<&str> = UserType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(
        in_rules, in_service,
        "firestore.rules and UserType::ALL name different user types"
    );
}

#[test]
fn the_rules_name_the_services_admin_claim() {
    let rules = rules();
    let check = format!("request.auth.token.{ADMIN_CLAIM} == true");
    assert!(
        rules.contains(&check),
        "firestore.rules does not check {check}"
    );
    assert_eq!(
        rules.matches("request.auth.token.").count(),
        1,
        "the rules read another claim than {ADMIN_CLAIM}"
    );
}
