use std::process::ExitCode;

use clap::error::ErrorKind;
use token_limits::app::Application;
use token_limits::auth::emulator_token;
use token_limits::config::{Cli, Command, Config, DevTokenArgs, LifecycleCommand, LogFormat};
use token_limits::lifecycle::{self, Outcome};
use token_limits::store::open_document_store;
use token_limits::telemetry;

/// Requests allocate many small, short-lived values on one thread and free some on another:
/// mimalloc takes about a tenth less CPU per recorded request than glibc's malloc
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) =>
        {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One line that names the flag and its variable, as operators grep for it.
            let rendered = error.render().to_string();
            eprintln!(
                "{}",
                rendered.lines().next().unwrap_or("invalid configuration")
            );
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(config)) => serve(*config),
        Some(Command::DevToken(args)) => dev_token(&args),
        Some(Command::Lifecycle(command)) => return run_lifecycle(command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("token-limits: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// How many tasks a runtime thread runs between two looks at the runtime's shared queue. The
/// embedded store's writer and reader answer from threads of their own, so every answered
/// request is woken through that queue, while new requests' sockets fill each thread's own
/// queue. Tokio's self-tuned interval (a look every 200 µs or so) let answered requests wait
/// behind new ones: looking every 8th task took 0.17 ms off the p99 of `POST /usage` and added
/// 6 % to its requests/s (BENCHMARKS.md).
const SHARED_QUEUE_INTERVAL: u32 = 8;

fn serve(config: Config) -> anyhow::Result<()> {
    let _logging = telemetry::init(config.log_format, config.firestore_project());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .global_queue_interval(SHARED_QUEUE_INTERVAL)
        .build()?;
    runtime.block_on(async {
        let app = Application::build(config).await?;
        tracing::info!(address = %app.local_addr()?, "serving");
        app.run().await;
        Ok(())
    })
}

/// Exit codes of a lifecycle command: 0 clean, 1 findings, 2 bad usage (as clap), 3 it could
/// not finish.
const LIFECYCLE_FAILED: u8 = 3;

fn run_lifecycle(command: LifecycleCommand) -> ExitCode {
    let _logging = telemetry::init(LogFormat::Json, command.store().firestore_project());
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run_on_its_store(command)));
    match outcome {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(error) => {
            eprintln!("token-limits: {error:#}");
            ExitCode::from(LIFECYCLE_FAILED)
        }
    }
}

/// Runs the command on the store it names, to its end: `Ok` says whether it found anything,
/// `Err` that it could not finish.
async fn run_on_its_store(command: LifecycleCommand) -> anyhow::Result<Outcome> {
    let store = open_document_store(command.store()).await?;
    let store = store.as_ref();
    match command {
        LifecycleCommand::Verify { args, .. } => lifecycle::verify(&args, store).await,
        LifecycleCommand::RebuildHistory { args, .. } => {
            lifecycle::rebuild_history(&args, store).await
        }
        LifecycleCommand::Cleanup { args, .. } => lifecycle::cleanup(&args, store).await,
        LifecycleCommand::Archive { args, .. } => lifecycle::archive(&args, store).await,
        LifecycleCommand::Export { args, .. } => lifecycle::export(&args, store).await,
        LifecycleCommand::Import { args, .. } => lifecycle::import(&args, store).await,
    }
}

fn dev_token(args: &DevTokenArgs) -> anyhow::Result<()> {
    if !args.emulator_mode() {
        anyhow::bail!(
            "dev-token only issues tokens for demo- projects or with FIREBASE_AUTH_EMULATOR_HOST set (FIREBASE_PROJECT_ID={})",
            args.firebase_project_id
        );
    }
    let token = emulator_token(
        &args.firebase_project_id,
        &args.uid,
        args.admin,
        args.user_type,
        &args.user_type_claim,
        chrono::Utc::now(),
    );
    println!("{token}");
    Ok(())
}
