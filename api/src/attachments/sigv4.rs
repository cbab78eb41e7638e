//! Presigned S3 URLs (AWS Signature Version 4, query-string authentication)
//! that sign what `object_store`'s own signer leaves out: request headers the
//! holder must send as they are, and the response headers the store answers
//! with.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::Mac;
use object_store::aws::AwsCredential;
use sha2::{Digest, Sha256};
use url::Url;

use super::HmacSha256;

/// A request to presign.
#[derive(Debug)]
pub struct Presign<'a> {
    /// `GET` or `PUT`.
    pub method: &'a str,
    /// The object's URL, without a query.
    pub url: Url,
    /// Headers besides `host` the request must carry with these values:
    /// lowercase names, values without surrounding spaces.
    pub headers: &'a [(&'a str, String)],
    /// Query parameters besides the signature's own, such as
    /// `response-content-disposition`.
    pub query: &'a [(&'a str, &'a str)],
    /// How long the URL works.
    pub expires_in: Duration,
}

impl Presign<'_> {
    /// The URL, signed with `credential` for `region` as of `now`.
    pub fn sign(&self, credential: &AwsCredential, region: &str, now: DateTime<Utc>) -> Url {
        let date = now.format("%Y%m%d").to_string();
        let timestamp = now.format("%Y%m%dT%H%M%SZ").to_string();
        let scope = format!("{date}/{region}/s3/aws4_request");

        let mut headers: Vec<(&str, &str)> = Vec::with_capacity(self.headers.len() + 1);
        let host = &self.url[url::Position::BeforeHost..url::Position::AfterPort];
        headers.push(("host", host));
        headers.extend(
            self.headers
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        );
        headers.sort_unstable();
        let signed_headers = headers
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(";");

        let credential_param = format!("{}/{scope}", credential.key_id);
        let expires = self.expires_in.as_secs().to_string();
        let mut query: Vec<(&str, &str)> = vec![
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", &credential_param),
            ("X-Amz-Date", &timestamp),
            ("X-Amz-Expires", &expires),
            ("X-Amz-SignedHeaders", &signed_headers),
        ];
        if let Some(token) = &credential.token {
            query.push(("X-Amz-Security-Token", token));
        }
        query.extend_from_slice(self.query);
        let mut encoded: Vec<(String, String)> = query
            .iter()
            .map(|(name, value)| (encode(name), encode(value)))
            .collect();
        encoded.sort_unstable();
        let canonical_query = encoded
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&");

        let canonical_headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}:{}\n", value.trim()))
            .collect();
        let canonical_request = format!(
            "{}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\nUNSIGNED-PAYLOAD",
            self.method,
            self.url.path(),
        );
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{timestamp}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );

        let key = [date.as_str(), region, "s3", "aws4_request"].iter().fold(
            format!("AWS4{}", credential.secret_key).into_bytes(),
            |key, part| hmac(&key, part.as_bytes()),
        );
        let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));

        let mut url = self.url.clone();
        url.set_query(Some(&format!(
            "{canonical_query}&X-Amz-Signature={signature}"
        )));
        url
    }
}

fn hmac(key: &[u8], text: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(text);
    mac.finalize().into_bytes().to_vec()
}

/// Percent-encodes all but the unreserved characters, as SigV4 wants a
/// query's names and values.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The presigned URL of AWS's documentation of query-string
    /// authentication ("Example: Presigned URL").
    #[test]
    fn a_url_is_signed_as_the_aws_documentation_signs_its_example() {
        let credential = AwsCredential {
            key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        };
        let presign = Presign {
            method: "GET",
            url: "https://examplebucket.s3.amazonaws.com/test.txt"
                .parse()
                .unwrap(),
            headers: &[],
            query: &[],
            expires_in: Duration::from_secs(86400),
        };
        let now = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let url = presign.sign(&credential, "us-east-1", now);
        assert_eq!(
            url.query_pairs()
                .find(|(name, _)| name == "X-Amz-Signature")
                .unwrap()
                .1,
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
    }

    #[test]
    fn names_and_values_are_encoded_but_for_unreserved_characters() {
        assert_eq!(
            encode("attachment; filename=\"a b+c.pdf\"/~"),
            "attachment%3B%20filename%3D%22a%20b%2Bc.pdf%22%2F~"
        );
    }
}
