//! The peer a team would otherwise pick: a plain cqrs-es + postgres-es axum
//! app shaped like cqrs-es's own demo (serverlesstechnology/cqrs-demo). One
//! aggregate, a bank account; one command per `POST /account/{id}`; the
//! framework's event store and a view kept by a `GenericQuery` in the request,
//! as the demo does; `GET /account/{id}` answers the view, as the demo's query
//! handler does. Nothing here is tuned beyond what the demo does, so it
//! measures what the framework gives out of the box.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use cqrs_es::persist::{GenericQuery, ViewRepository};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, View};
use postgres_es::{PostgresCqrs, PostgresViewRepository};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// A command on an account, in minor units of money.
#[derive(Debug, Deserialize)]
pub enum AccountCommand {
    /// Opens the account.
    OpenAccount {
        /// Its id.
        account_id: String,
    },
    /// Puts money in.
    DepositMoney {
        /// How much.
        amount: i64,
    },
    /// Takes money out.
    WithdrawMoney {
        /// How much.
        amount: i64,
    },
    /// Pays a check from the account.
    WriteCheck {
        /// The check's number.
        check_number: String,
        /// How much.
        amount: i64,
    },
}

/// What happened to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// It was opened.
    AccountOpened {
        /// Its id.
        account_id: String,
    },
    /// Money came in.
    CustomerDepositedMoney {
        /// How much.
        amount: i64,
        /// The balance after.
        balance: i64,
    },
    /// Money went out as cash.
    CustomerWithdrewCash {
        /// How much.
        amount: i64,
        /// The balance after.
        balance: i64,
    },
    /// Money went out as a check.
    CustomerWroteCheck {
        /// The check's number.
        check_number: String,
        /// How much.
        amount: i64,
        /// The balance after.
        balance: i64,
    },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        match self {
            AccountEvent::AccountOpened { .. } => "AccountOpened",
            AccountEvent::CustomerDepositedMoney { .. } => "CustomerDepositedMoney",
            AccountEvent::CustomerWithdrewCash { .. } => "CustomerWithdrewCash",
            AccountEvent::CustomerWroteCheck { .. } => "CustomerWroteCheck",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Why an account refused a command.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not enough money.
    #[error("funds not available")]
    InsufficientFunds,
    /// Opened twice.
    #[error("account already open")]
    AlreadyOpen,
}

/// The aggregate.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BankAccount {
    opened: bool,
    balance: i64,
}

impl Aggregate for BankAccount {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            AccountCommand::OpenAccount { account_id } => {
                if self.opened {
                    return Err(AccountError::AlreadyOpen);
                }
                AccountEvent::AccountOpened { account_id }
            }
            AccountCommand::DepositMoney { amount } => AccountEvent::CustomerDepositedMoney {
                amount,
                balance: self.balance + amount,
            },
            AccountCommand::WithdrawMoney { amount } => {
                if self.balance < amount {
                    return Err(AccountError::InsufficientFunds);
                }
                AccountEvent::CustomerWithdrewCash {
                    amount,
                    balance: self.balance - amount,
                }
            }
            AccountCommand::WriteCheck {
                check_number,
                amount,
            } => {
                if self.balance < amount {
                    return Err(AccountError::InsufficientFunds);
                }
                AccountEvent::CustomerWroteCheck {
                    check_number,
                    amount,
                    balance: self.balance - amount,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            AccountEvent::AccountOpened { .. } => self.opened = true,
            AccountEvent::CustomerDepositedMoney { balance, .. }
            | AccountEvent::CustomerWithdrewCash { balance, .. }
            | AccountEvent::CustomerWroteCheck { balance, .. } => self.balance = balance,
        }
    }
}

/// The demo's read model: an account's balance and ledger size.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AccountView {
    account_id: Option<String>,
    balance: i64,
    transactions: u64,
}

impl View<BankAccount> for AccountView {
    fn update(&mut self, event: &EventEnvelope<BankAccount>) {
        match &event.payload {
            AccountEvent::AccountOpened { account_id } => {
                self.account_id = Some(account_id.clone())
            }
            AccountEvent::CustomerDepositedMoney { balance, .. }
            | AccountEvent::CustomerWithdrewCash { balance, .. }
            | AccountEvent::CustomerWroteCheck { balance, .. } => {
                self.balance = *balance;
                self.transactions += 1;
            }
        }
    }
}

/// The view's repository.
type Views = PostgresViewRepository<AccountView, BankAccount>;

/// The framework and the view it keeps, shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    cqrs: Arc<PostgresCqrs<BankAccount>>,
    views: Arc<Views>,
}

/// The framework on `pool`, with the view kept in table `account_query`.
pub fn framework(pool: PgPool) -> AppState {
    let views: Arc<Views> = Arc::new(PostgresViewRepository::new("account_query", pool.clone()));
    let query = GenericQuery::new(views.clone());
    AppState {
        cqrs: Arc::new(postgres_es::postgres_cqrs(pool, vec![Box::new(query)], ())),
        views,
    }
}

/// `POST /account/{id}`: one command; `GET /account/{id}`: the account's view.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/account/{id}", post(command).get(query))
        .with_state(state)
}

async fn query(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.views.load(&id).await {
        Ok(Some(view)) => (StatusCode::OK, Json(view)).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => {
            eprintln!("plain-cqrs: {err}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn command(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(command): Json<AccountCommand>,
) -> Response {
    match state.cqrs.execute(&id, command).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(AggregateError::UserError(err)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, err.to_string()).into_response()
        }
        Err(AggregateError::AggregateConflict) => StatusCode::CONFLICT.into_response(),
        Err(err) => {
            eprintln!("plain-cqrs: {err}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
